"""``orthogonal``: keep the LoRA update of residual-stream writers off the harmful directions.

After each optimiser step, for every LoRA module that writes into the residual stream
(``o_proj``/``down_proj``; GPT-2 ``attn.c_proj``/``mlp.c_proj``) in a guarded block ``l``, its
``lora_B`` weight ``B`` (``[D, r]``) is replaced by ``(I - U Uᵀ) B`` where ``U`` (``[D, k]``) is
an orthonormal basis (QR) of the guarded harmful directions at layer ``l``. The update
``ΔW = scale · B @ A`` then has no component along them: the block cannot write the harmful
directions into the residual stream that the atlas measures at layer ``l``. No extra forward;
the cost is one ``[k, D] @ [D, r]`` product per module and step. At strength ``s < 1``
(:mod:`geomsafe.guard.schedule`) only the share ``s`` is removed: ``B - s U(UᵀB)``.

With ``GuardConfig.orthogonal_scope="upto"`` the writers of every block ``j <= l`` are
projected too (they all feed layer ``l``); a block then uses the union of the directions of
the guarded layers at or above it.

Logs ``removed``: the largest share (norm ratio) of a writer's ``B`` that lay along the harmful
directions after the optimiser step (what a full-strength projection takes out).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geomsafe.errors import GeomsafeError
from geomsafe.guard.atlas_guard import AtlasGuard
from geomsafe.guard.base import register
from geomsafe.guard.basis import orthonormal_basis
from geomsafe.layers import submodule


@register
class OrthogonalGuard(AtlasGuard):
    name = "orthogonal"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._bases = self._block_bases()
        self._writers: dict[int, list[tuple[nn.Module, Tensor]]] = {}
        self._moved: dict[tuple[int, str], Tensor] = {}

    def _block_bases(self) -> dict[int, Tensor]:
        """Block index -> ``[D, k]`` basis of the directions its writers must avoid."""
        out = {}
        if self.config.orthogonal_scope == "layer":
            for plan in self.plans:
                out[plan.layer] = orthonormal_basis(plan.harmful)
            return out
        for block in range(self.plans[-1].layer + 1):
            rows = [plan.harmful for plan in self.plans if plan.layer >= block]
            out[block] = orthonormal_basis(torch.cat(rows))
        return out

    def writers(self, model: nn.Module) -> list[tuple[nn.Module, Tensor]]:
        """(LoRA module, basis) pairs of the residual-stream writers of the guarded blocks."""
        key = id(model)
        if key in self._writers:
            return self._writers[key]
        blocks = self.blocks(model)
        found: list[tuple[nn.Module, Tensor]] = []
        for index, basis in self._bases.items():
            for path in self.config.writers:
                module = submodule(blocks[index], path)
                if module is not None and isinstance(
                    getattr(module, "lora_B", None), nn.ModuleDict
                ):
                    found.append((module, basis))
        if not found:
            raise GeomsafeError(
                "orthogonal guard: no LoRA adapter on a residual-stream writer "
                f"({', '.join(self.config.writers[:4])}, ...) in blocks {sorted(self._bases)}; "
                "add o_proj/down_proj (GPT-2: c_proj) to the LoRA target modules"
            )
        self._writers = {key: found}
        return found

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ratios: list[Tensor] = []  # share of each B removed, read back once (one device sync)
        for module, basis in self.writers(model):
            active = getattr(module, "active_adapters", None) or list(module.lora_B.keys())
            for adapter in active:
                if adapter not in module.lora_B:
                    continue
                if getattr(module, "use_dora", {}).get(adapter, False):
                    raise GeomsafeError("orthogonal guard: DoRA adapters are not supported")
                weight = module.lora_B[adapter].weight  # [D, r]
                if weight.shape[0] != basis.shape[0]:
                    raise GeomsafeError(
                        f"orthogonal guard: LoRA B has {weight.shape[0]} output rows, the atlas "
                        f"width is {basis.shape[0]}"
                    )
                u = self._on(basis, weight.device)
                w = weight.float()
                coef = u.T @ w  # [k, r]
                ratios.append(coef.norm() / w.norm().clamp(min=1e-30))
                weight.copy_((w - self.strength * (u @ coef)).to(weight.dtype))
        self._extra = {"removed": float(torch.stack(ratios).max()) if ratios else 0.0}

    def _on(self, basis: Tensor, device: torch.device) -> Tensor:
        key = (id(basis), str(device))
        if key not in self._moved:
            self._moved[key] = basis.to(device)
        return self._moved[key]
