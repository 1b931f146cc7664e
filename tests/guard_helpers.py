"""Shared pieces of the guard tests: a random atlas, a tiny peft model, a batch, a custom
guard kind."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from peft import LoraConfig, get_peft_model

from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import record
from geomsafe.guard import GUARDS, AtlasGuard, register
from geomsafe.layers import decoder_blocks
from geomsafe.testing import tiny_model

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]
WIDTH, N_LAYERS = 32, 3
PEFT_TEMPLATE = "base_model.model.model.layers.{num}"


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def random_atlas(
    n_layers: int = N_LAYERS,
    width: int = WIDTH,
    harmful: Sequence[str] = ("tox", "dec"),
    targets: Sequence[str] = ("help", "code"),
    best: int = 1,
    seed: int = 0,
    spec: str | None = None,
) -> FeatureAtlas:
    """Random unit directions at every layer; every concept's best layer is ``best``; the
    harmful concepts' ``diff_norm`` at layer l is ``(i + 1) * (l + 1)`` for the i-th one."""
    g = torch.Generator().manual_seed(seed)
    kinds = {**{n: "harmful" for n in harmful}, **{t: "target" for t in targets}}
    dirs = {n: unit(torch.randn(n_layers, width, generator=g)) for n in kinds}
    stats: dict[str, dict] = {n: {"best_layer": best} for n in kinds}
    for i, name in enumerate(harmful):
        stats[name]["diff_norm"] = [float((i + 1) * (layer + 1)) for layer in range(n_layers)]
    provenance = {"model_spec": spec} if spec else {}
    return FeatureAtlas(list(range(n_layers)), dirs, kinds, stats, provenance)


def peft_llama(seed: int = 0, family: str = "llama"):
    lm = tiny_model(family, n_layers=N_LAYERS, width=WIDTH, seed=seed)
    targets = LLAMA_TARGETS if family == "llama" else ["c_attn", "c_proj", "c_fc"]
    torch.manual_seed(seed)
    model = get_peft_model(lm.model, LoraConfig(r=4, target_modules=targets))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    model.train()
    return model


def randomise_lora_b(model, std: float = 0.2, seed: int = 1) -> None:
    """Give every LoRA ``B`` random values (they start at zero: adapted == base)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)


def hooks(model) -> list[int]:
    """The number of forward hooks on each decoder block."""
    return [len(b._forward_hooks) for b in decoder_blocks(model)]


def make_batch(seed: int = 0, batch: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # right padding on the second row
    labels = ids.clone()
    labels[:, :5] = -100  # prompt tokens
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def residuals(model, batch) -> tuple[torch.Tensor, ...]:
    """Decoder-layer outputs (all but the last layer's) via output_hidden_states, with grad."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_hidden_states=True,
    )
    return out.hidden_states[1:]


def layer_outs(model, batch, layers, template=PEFT_TEMPLATE) -> dict[int, torch.Tensor]:
    """Decoder-layer outputs at ``layers`` (recorded after any hook installed before)."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with record(model, layers, template) as store:
        model(**kwargs)
    return dict(store)


def assistant_mean(hidden: torch.Tensor, batch, direction: torch.Tensor) -> float:
    """Mean projection of the assistant tokens' residuals on ``direction``."""
    mask = batch["labels"] != -100
    return float((hidden.detach()[mask] @ direction).mean())


def check_own_projection_logged(guard, model, batch, before: torch.Tensor, atlas) -> None:
    """A guard that changes the layer output logs the model's own projection (``before`` the
    change) of ``tox`` at layer 1, and no penalty."""
    with guard.install(model):
        model(**batch)
    assert guard.penalty(model, batch) is None
    direct = assistant_mean(before, batch, atlas.direction("tox", 1))
    assert abs(guard.log()["proj/tox"] - direct) < 1e-5
    assert guard.log()["penalty"] == 0.0


@contextlib.contextmanager
def custom_guard_kind(kind: str = "square") -> Iterator[type[AtlasGuard]]:
    """A guard kind geomsafe does not ship, defined and registered here, unregistered after the
    block: it penalises ``weight`` x the mean over assistant tokens of the summed squared
    projections on the guarded directions (with gradients)."""

    @register
    class SquareGuard(AtlasGuard):
        name = kind
        keep_graph = True

        def compute_penalty(self, model, inputs, mask):
            weights = mask.float()
            total = sum((self.recorded[p.layer].pow(2).sum(-1) * weights).sum() for p in self.plans)
            return self.config.weight * total / weights.sum().clamp(min=1.0)

    try:
        yield SquareGuard
    finally:
        GUARDS.pop(kind, None)
