from __future__ import annotations

import pytest
import torch

from geomsafe.capture import record
from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig, build_guards
from guard_helpers import (
    PEFT_TEMPLATE,
    WIDTH,
    check_own_projection_logged,
    hooks,
    make_batch,
    peft_llama,
    random_atlas,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def layer_out(model, batch, layer: int = 1) -> torch.Tensor:
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with record(model, [layer], PEFT_TEMPLATE) as store:
        model(**kwargs)
    return store[layer]


def test_steer_adds_exactly_during_install_only():
    atlas = random_atlas()
    model = peft_llama()
    batch = make_batch()
    coeff = 0.7
    cfg = GuardConfig(concepts=["tox", "dec"], steer_coeff=coeff, steer_scale="unit")
    (guard,) = build_guards(["steer"], atlas, cfg, layer_template=PEFT_TEMPLATE)
    n_hooks = hooks(model)
    before = layer_out(model, batch)
    with guard.install(model):
        steered = layer_out(model, batch)
    after = layer_out(model, batch)
    expected = coeff * (atlas.direction("tox", 1) + atlas.direction("dec", 1))
    torch.testing.assert_close(steered - before, expected.expand_as(before), atol=1e-5, rtol=0)
    torch.testing.assert_close(after, before)
    assert hooks(model) == n_hooks
    check_own_projection_logged(guard, model, batch, before, atlas)  # before the addition


@pytest.mark.parametrize("scale", ["norm", "diff"])
def test_steer_scales(scale):
    atlas = random_atlas()
    model = peft_llama()
    batch = make_batch()
    cfg = GuardConfig(concepts=["tox"], steer_coeff=0.5, steer_scale=scale)
    (guard,) = build_guards(["steer"], atlas, cfg)
    before = layer_out(model, batch)
    with guard.install(model):
        steered = layer_out(model, batch)
    u = atlas.direction("tox", 1)
    if scale == "norm":
        size = float(before.reshape(-1, WIDTH).norm(dim=-1).median())
        assert guard.norms[1] == pytest.approx(size, rel=1e-5)
    else:
        size = atlas.stats["tox"]["diff_norm"][1]
    torch.testing.assert_close(
        steered - before, (0.5 * size * u).expand_as(before), atol=1e-4, rtol=0
    )
    guard.after_step(model)
    assert ("norm@1" in guard.log()) == (scale == "norm")


def test_steer_diff_scale_needs_the_atlas_stat():
    atlas = random_atlas()
    del atlas.stats["tox"]["diff_norm"]
    with pytest.raises(GeomsafeError, match="diff_norm"):
        build_guards(["steer"], atlas, GuardConfig(["tox"], steer_scale="diff"))
