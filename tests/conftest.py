import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: Real recordings: ../shared/data beside the checkout, or $BIRDSEP_TEST_DATA (e.g. from a git worktree).
DATA = Path(os.environ.get("BIRDSEP_TEST_DATA") or REPO.parent / "shared" / "data")


def need_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real audio not found at {DATA} (the ../shared/data folder beside the checkout, "
                "or set BIRDSEP_TEST_DATA)")
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
    """Measured precision choices and installed models go to temporary folders, not the user's
    ~/.cache and ~/.local/share."""
    os.environ["BIRDSEP_CACHE"] = str(tmp_path_factory.mktemp("birdsep_cache"))
    os.environ["BIRDSEP_MODELS_DIR"] = str(tmp_path_factory.mktemp("birdsep_models"))


def pytest_addoption(parser):
    parser.addoption("--serve-screenshot", default=None, metavar="PATH",
                     help="also save the web page's screenshot (birdsep serve's browser test) to PATH, "
                          "relative to the checkout, e.g. docs/serve.png")
