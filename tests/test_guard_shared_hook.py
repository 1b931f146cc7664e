from __future__ import annotations

import pytest
import torch

from geomsafe.capture import record
from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig, MonitorGuard, build_guards
from geomsafe.guard.base import combined
from geomsafe.guard.shared_hook import shared_layers, suspended
from geomsafe.layers import decoder_blocks, hidden_of
from guard_helpers import make_batch, peft_llama, random_atlas, residuals

pytestmark = pytest.mark.usefixtures("one_thread")


def guards_and_monitor(atlas, steer: bool = False):
    kinds = "steer,projection,covariance" if steer else "projection,covariance"
    config = GuardConfig(["tox", "dec"], targets=["help"], steer_scale="unit")
    return [MonitorGuard(atlas, ["dec"]), *build_guards(kinds, atlas, config)]


def test_union_holds_each_direction_once_and_each_guard_its_columns():
    atlas = random_atlas()
    monitor, projection, covariance = guards_and_monitor(atlas)
    (layer,) = shared_layers([monitor, projection, covariance])
    assert layer.layer == 1
    torch.testing.assert_close(layer.rows, atlas.matrix(1, ["dec", "tox", "help"]))
    columns = [reader.columns for reader in layer.readers]
    assert columns == [[0], [1, 0], [1, 0, 2]]
    (alone,) = shared_layers([covariance])
    assert alone.readers[0].columns is None  # its own union: all columns, in its order


def test_each_guard_records_what_it_records_alone():
    atlas = random_atlas()
    model, batch = peft_llama(), make_batch()
    together = guards_and_monitor(atlas)
    with combined(together, model):
        model(**batch)
    hidden = residuals(model, batch)[1]
    for guard in together:
        (plan,) = guard.plans
        want = hidden @ plan.directions.T
        torch.testing.assert_close(guard.recorded[1], want, atol=1e-5, rtol=0)
        with guard.install(model):
            model(**batch)
        torch.testing.assert_close(guard.recorded[1], want, atol=1e-5, rtol=0)


def test_graph_kept_only_for_guards_whose_penalty_needs_it():
    atlas = random_atlas()
    model, batch = peft_llama(), make_batch()
    monitor, steer, projection, covariance = guards_and_monitor(atlas, steer=True)
    with combined([monitor, steer, projection], model):
        model(**batch)
    assert projection.recorded[1].requires_grad
    assert not monitor.recorded[1].requires_grad and not steer.recorded[1].requires_grad
    with combined([monitor, steer], model):
        model(**batch)
    assert not monitor.recorded[1].requires_grad and not steer.recorded[1].requires_grad


def test_steering_comes_after_recording_and_after_earlier_hooks():
    atlas = random_atlas()
    model, batch = peft_llama(), make_batch()
    monitor, steer, projection, _ = guards_and_monitor(atlas, steer=True)
    plain = residuals(model, batch)[1].detach()
    block = decoder_blocks(model)[1]
    seen = []
    handle = block.register_forward_hook(lambda _m, _i, out: seen.append(hidden_of(out).detach()))
    before = list(block._forward_hooks)
    try:
        with combined([monitor, projection], model):  # recording only: the hook goes first
            assert list(block._forward_hooks)[1:] == before
            model(**batch)
        with combined([steer, monitor, projection], model):  # steering: the hook goes last
            assert list(block._forward_hooks)[:-1] == before
            with record(model, [1]) as store:  # appended after the guards' hook
                model(**batch)
            steered = store[1]
    finally:
        handle.remove()
    torch.testing.assert_close(seen[-1], plain)  # the earlier hook saw the unsteered output
    u = atlas.direction("tox", 1) + atlas.direction("dec", 1)
    torch.testing.assert_close(steered - plain, 0.1 * u.expand_as(plain), atol=1e-5, rtol=0)
    # every guard recorded the layer output before steering was added
    torch.testing.assert_close(monitor.recorded[1][..., 0], plain @ atlas.direction("dec", 1))
    for guard in (steer, projection):
        want = plain @ atlas.matrix(1, ["tox", "dec"]).T
        torch.testing.assert_close(guard.recorded[1].detach(), want, atol=1e-5, rtol=0)


def test_suspended_hooks_are_inert_and_width_is_checked():
    atlas = random_atlas()
    model, batch = peft_llama(), make_batch()
    guards = guards_and_monitor(atlas)
    with combined(guards, model), suspended():
        model(**batch)
    assert all(g.recorded == {} for g in guards)
    narrow = random_atlas(width=16)
    both = [MonitorGuard(narrow, ["tox"]), *build_guards("projection", narrow)]
    with (
        pytest.raises(GeomsafeError, match="monitor, projection guard: atlas width 16"),
        combined(both, model),
    ):
        model(**batch)
