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
