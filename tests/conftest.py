from __future__ import annotations

import sys
from pathlib import Path

import pytest

from geomsafe.testing import FAMILIES, tiny_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# The measurement scripts and their library (``lib``): importable by every test, once.
EXPERIMENTS = str(Path(__file__).resolve().parents[1] / "experiments")
if EXPERIMENTS not in sys.path:
    sys.path.insert(0, EXPERIMENTS)


@pytest.fixture(params=FAMILIES)
def any_tiny(request):
    return tiny_model(request.param)


@pytest.fixture
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and spinning threads crawl on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
