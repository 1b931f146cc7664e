"""The shard / reduce helpers of :mod:`geomsafe.distributed` in one process: the identity
without a process group, real collectives on a one-process gloo group (a capture inside
``data_parallel`` equals one outside it), one-line errors for a broken launch environment."""

from __future__ import annotations

import pytest
import torch

from geomsafe import distributed
from geomsafe.capture import capture, capture_projections
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example
from geomsafe.testing import tiny_model

LAUNCH = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_launcher(monkeypatch):
    for key in LAUNCH:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def group(no_launcher, tmp_path):
    """A one-process gloo group, destroyed after the test."""
    store = f"file://{tmp_path / 'store'}"
    torch.distributed.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def test_without_a_group_every_helper_is_the_identity(no_launcher):
    t = torch.tensor([1.0, 2.0])
    with distributed.data_parallel():
        assert not distributed.active() and not torch.distributed.is_initialized()
        assert distributed.mine("abc") == ["a", "b", "c"]
        distributed.all_sum(t, None)
        assert distributed.sum_dict({"a": t}, "cpu") == {"a": t}
        assert distributed.gather_dict({1: "x"}) == {1: "x"}
        assert distributed.sum_grads([None, t], [t, t]) == [None, t]
    assert t.tolist() == [1.0, 2.0]
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert not distributed.launched()


def test_a_one_process_group_runs_the_collectives(group):
    assert not distributed.active()  # only inside data_parallel
    with distributed.data_parallel():
        assert distributed.active() and distributed.shard_rank() == 0
        assert distributed.mine([3, 1, 2]) == [3, 1, 2]
        t = torch.tensor([1.0, 2.0])
        distributed.all_sum(t)
        assert t.tolist() == [1.0, 2.0]
        summed = distributed.sum_dict({"b": torch.ones(2), "a": torch.zeros(1)}, "cpu")
        assert list(summed) == ["b", "a"] and summed["b"].tolist() == [1.0, 1.0]
        grads = distributed.sum_grads([None, torch.ones(2)], [torch.ones(3), torch.ones(2)])
        assert grads[0] is not None and grads[0].tolist() == [0.0, 0.0, 0.0]
        assert distributed.gather_dict({(0, 1): ("text", 3)}) == {(0, 1): ("text", 3)}
    assert torch.distributed.is_initialized()  # a group it did not start is left running


def test_mine_deals_batches_round_robin(group, monkeypatch):
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, **k: 1)
    with distributed.data_parallel():
        assert distributed.mine(list(range(5))) == [1, 3]
        assert distributed.shard_rank() == 1


def test_a_capture_inside_data_parallel_equals_one_outside(group):
    lm = tiny_model("llama")
    shared = "Tell me about rivers and stones."
    examples = [Example(shared, f"reply {'x' * i}") for i in range(5)] + [Example("hi", "ok")]
    want = capture(lm, examples, batch_size=2, heads=True, share_prefix=True, progress=False)
    u = {1: torch.randn(2, lm.d_model)}
    want_p = capture_projections(lm, examples, u, batch_size=2, progress=False)
    with distributed.data_parallel():
        got = capture(lm, examples, batch_size=2, heads=True, share_prefix=True, progress=False)
        got_p = capture_projections(lm, examples, u, batch_size=2, progress=False)
    torch.testing.assert_close(got.pooled, want.pooled, atol=0, rtol=0)
    assert got.heads is not None and want.heads is not None
    torch.testing.assert_close(got.heads, want.heads, atol=0, rtol=0)
    torch.testing.assert_close(got_p[1], want_p[1], atol=0, rtol=0)


def test_a_broken_launch_environment_is_one_line(no_launcher, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(GeomsafeError, match="WORLD_SIZE='two' is not a whole number"):
        distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with (
        pytest.raises(GeomsafeError, match=r"RANK, MASTER_ADDR, MASTER_PORT unset.*torchrun"),
        distributed.data_parallel(),
    ):
        pass
    assert not torch.distributed.is_initialized()
