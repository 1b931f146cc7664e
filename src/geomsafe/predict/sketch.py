"""A LoRA-shaped sketch of weight gradients, computed from activations without forming them.

For every linear map ``y = W x`` of the transformer blocks (the modules a LoRA with
``target_modules="all-linear"`` adapts; the embeddings and LM head excluded), a fixed random
``A`` (``rank x in``, entries N(0, 1/rank), seeded) defines the sketch of the gradient
``∇W = sum_t δ_t x_tᵀ`` (δ = the gradient of the objective at the module's output) as
``S = ∇W Aᵀ = sum_t δ_t (A x_t)ᵀ`` (``out x rank``), which is the gradient of a LoRA's
up-projection B at B = 0 with down-projection A. Two consequences:

- ``<S_1, S_2>`` (summed over modules) is the first-order change of objective 2 after the
  LoRA-shaped step ``ΔW = -∇W_1 AᵀA`` on objective 1 (the first SGD step of that LoRA, up to
  its scaling); and, since ``E[AᵀA] = I``, an unbiased estimate of the full-weight inner
  product ``<∇W_1, ∇W_2>``.
- The sketch of one example's gradient is available in the backward pass of a batch, so
  per-example inner products with fixed sketches cost two small einsums per module, no
  per-example backward.

Memory: ``rank x sum(out)`` floats per sketch (about 10 MB at rank 16 on a 135M model); no
weight gradient is ever allocated (weights keep ``requires_grad=False``; the graph is rooted at
the input embeddings, made to require grad inside :func:`sketching`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from geomsafe import hooks
from geomsafe.layers import get_layers
from geomsafe.models import LoadedModel


def block_linears(lm: LoadedModel) -> list[tuple[str, nn.Module, int]]:
    """``(name, module, in_features)`` of every linear map inside the transformer blocks
    (``nn.Linear`` and GPT-2's ``Conv1D``, whose weight is stored ``in x out``)."""
    out = []
    for i, block in enumerate(get_layers(lm.model, lm.layer_template)):
        for name, mod in block.named_modules():
            if isinstance(mod, nn.Linear):
                out.append((f"{i}.{name}", mod, mod.in_features))
            elif type(mod).__name__ == "Conv1D":
                out.append((f"{i}.{name}", mod, mod.weight.shape[0]))
    return out


def sketch_matrices(lm: LoadedModel, rank: int, seed: int) -> dict[str, Tensor]:
    """The fixed ``A`` of every module (``rank x in``, N(0, 1/rank)), seeded."""
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(rank, d_in, generator=gen) / rank**0.5
        for name, _, d_in in block_linears(lm)
    }


@dataclass
class Sketcher:
    """What the hooks of :func:`sketching` accumulate during backward passes.

    ``total[name]``: the sketch of the gradient of everything backpropagated so far.
    ``per_example``: when ``against`` (``name -> [H, out, rank]``) is set, the inner products
    ``[B, H]`` of each batch row's sketch with the H fixed sketches, for the current batch
    (``per_example`` is reset by :meth:`new_batch`)."""

    matrices: dict[str, Tensor]
    against: dict[str, Tensor] | None = None
    total: dict[str, Tensor] = field(default_factory=dict)
    per_example: Tensor | None = None

    def new_batch(self, rows: int) -> None:
        h = 0 if self.against is None else next(iter(self.against.values())).shape[0]
        self.per_example = torch.zeros(rows, h, dtype=torch.float64)

    def _on_grad(self, name: str, z: Tensor, grad: Tensor) -> None:
        s = torch.einsum("bto,btr->bor", grad.detach().float(), z)  # per-row sketches
        self.total[name] = self.total.get(name, 0) + s.sum(0)
        if self.against is not None and self.per_example is not None:
            dots = torch.einsum("bor,hor->bh", s, self.against[name])
            self.per_example += dots.double().cpu()


@contextlib.contextmanager
def sketching(
    lm: LoadedModel, matrices: dict[str, Tensor], against: dict[str, Tensor] | None = None
) -> Iterator[Sketcher]:
    """Hooks that sketch the gradient of whatever is backpropagated inside the block (module
    docstring); removed in ``finally``."""
    dev = lm.device
    moved = None if against is None else {k: v.to(dev) for k, v in against.items()}
    sk = Sketcher({k: v.to(dev) for k, v in matrices.items()}, moved)

    def on_forward(name: str):
        def hook(_mod, args, output):
            if not torch.is_grad_enabled() or not output.requires_grad:
                return None
            z = (args[0].detach().float() @ sk.matrices[name].T).detach()
            output.register_hook(lambda g: sk._on_grad(name, z, g))
            return None

        return hook

    def root(_mod, _args, output):  # the graph starts at the embeddings
        if torch.is_grad_enabled():
            return output.detach().requires_grad_(True)
        return None

    at = [hooks.Hook(lm.model.get_input_embeddings(), root)]
    at += [hooks.Hook(mod, on_forward(name)) for name, mod, _ in block_linears(lm)]
    with hooks.on_modules(at):
        yield sk


def inner(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """``sum over modules <a, b>`` (a module missing from one side contributes 0)."""
    return float(sum(float((a[k].double() * b[k].double()).sum()) for k in a if k in b))


def stack(sketches: Sequence[dict[str, Tensor]], names: Sequence[str]) -> dict[str, Tensor]:
    """``name -> [H, out, rank]`` from H sketches (zeros where one lacks a module)."""
    out = {}
    for n in names:
        ref = next(s[n] for s in sketches if n in s)
        out[n] = torch.stack([s.get(n, torch.zeros_like(ref)) for s in sketches])
    return out
