from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def need_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real audio not found at {DATA} (the ../shared/data folder beside the checkout)")
    return DATA


@pytest.fixture
def data_dir() -> Path:
    return need_data()


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Measured precision choices go to a temporary folder, not the user's ~/.cache."""
    import os

    os.environ["BIRDSEP_CACHE"] = str(tmp_path_factory.mktemp("birdsep_cache"))
