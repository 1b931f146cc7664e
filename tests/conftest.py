from __future__ import annotations

from pathlib import Path

import pytest

from geomsafe.testing import FAMILIES, tiny_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny models: thread sync costs more than it saves)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
