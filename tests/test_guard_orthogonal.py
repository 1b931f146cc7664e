from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from geomsafe.capture import record
from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig, build_guards
from geomsafe.layers import decoder_blocks
from geomsafe.testing import tiny_model
from guard_helpers import N_LAYERS, PEFT_TEMPLATE, WIDTH, make_batch, peft_llama, random_atlas, unit

pytestmark = pytest.mark.usefixtures("one_thread")


def writer_delta(module) -> torch.Tensor:
    """``B @ A`` ([out, in]) of a LoRA module's default adapter."""
    with torch.no_grad():
        return module.lora_B["default"].weight @ module.lora_A["default"].weight


def writers(model, layer: int, family: str = "llama"):
    block = decoder_blocks(model)[layer]
    if family == "llama":
        return [block.self_attn.o_proj, block.mlp.down_proj]
    return [block.attn.c_proj, block.mlp.c_proj]


def push_along(model, u: torch.Tensor, layer: int, steps: int, guards=(), family="llama") -> None:
    """SGD on a loss that rewards the residual at ``layer`` moving along ``u`` (the harmful
    direction) and along a second, random direction (the task)."""
    task = unit(torch.randn(u.shape[0], generator=torch.Generator().manual_seed(9)))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    batch = make_batch()
    for _ in range(steps):
        template = PEFT_TEMPLATE if family == "llama" else "base_model.model.transformer.h.{num}"
        with record(model, [layer], template, detach=False) as store:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = -(store[layer] @ (u + task)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        for guard in guards:
            guard.after_step(model)


def along_fraction(delta: torch.Tensor, u: torch.Tensor) -> float:
    return float((u @ delta).norm() / delta.norm())


@pytest.mark.filterwarnings("ignore:fan_in_fan_out")
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_orthogonal_removes_harmful_component(family):
    atlas = random_atlas()
    u = atlas.direction("tox", 1)
    cfg = GuardConfig(concepts=["tox"])

    plain = peft_llama(family=family)
    push_along(plain, u, 1, steps=3, family=family)
    for module in writers(plain, 1, family):
        assert along_fraction(writer_delta(module), u) > 0.1

    guarded = peft_llama(family=family)
    (guard,) = build_guards(["orthogonal"], atlas, cfg)
    push_along(guarded, u, 1, steps=3, guards=[guard], family=family)
    for module in writers(guarded, 1, family):
        delta = writer_delta(module)
        assert delta.norm() > 1e-3  # it did learn something
        assert along_fraction(delta, u) < 1e-5
    assert guard.log()["removed"] > 0.1
    # Blocks other than the guarded one are left alone (scope "layer").
    for module in writers(guarded, 0, family):
        assert along_fraction(writer_delta(module), u) > 1e-3


def test_orthogonal_upto_scope_projects_earlier_blocks():
    atlas = random_atlas()
    u = atlas.direction("tox", 1)
    model = peft_llama()
    (guard,) = build_guards(["orthogonal"], atlas, GuardConfig(["tox"], orthogonal_scope="upto"))
    push_along(model, u, 1, steps=3, guards=[guard])
    for layer in (0, 1):
        for module in writers(model, layer):
            assert along_fraction(writer_delta(module), u) < 1e-5


def test_orthogonal_needs_residual_writers():
    lm = tiny_model("llama", n_layers=N_LAYERS, width=WIDTH)
    model = get_peft_model(lm.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    (guard,) = build_guards(["orthogonal"], random_atlas(), GuardConfig(["tox"]))
    with pytest.raises(GeomsafeError, match="residual-stream writer"):
        guard.after_step(model)
