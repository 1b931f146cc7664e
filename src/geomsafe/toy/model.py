"""The toy model of superposition (Elhage et al., 2022): ``x' = ReLU(WᵀW x + b)``.

``W`` is ``[m, n]``: ``n`` features squeezed into ``m < n`` hidden dimensions; column ``W_i``
is feature ``i``'s direction in the hidden space, and the same matrix reads it back out (tied
weights; fine-tuning can freeze the read-out, see ``ToyModel.freeze_readout``). Many
independent models ("instances") are trained at once: parameters carry a leading instance axis
and the loss is a sum over instances, so each instance's gradient (and Adam's element-wise
state) only sees its own data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from geomsafe.config import at_least, option


@dataclass(frozen=True)
class ToyConfig:
    """Shape of a batch of toy models: ``n_instances`` models, each ``n_features -> n_hidden``."""

    n_features: int = option(help="Input features n.")
    n_hidden: int = option(help="Hidden dimensions m.")
    n_instances: int = option(1, "Independent models trained together.")

    def __post_init__(self) -> None:
        at_least(self, 1, "n_features", "n_hidden", "n_instances")


class ToyModel(nn.Module):
    """``n_instances`` independent toy models; ``W`` is ``[I, m, n]``, ``b`` is ``[I, n]``."""

    def __init__(self, config: ToyConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        i, m, n = config.n_instances, config.n_hidden, config.n_features
        std = (2.0 / (m + n)) ** 0.5  # Xavier normal, as in the paper's reference code
        self.W = nn.Parameter(torch.randn(i, m, n, generator=generator) * std)
        self.b = nn.Parameter(torch.zeros(i, n))
        self.readout: Tensor | None = None

    def freeze_readout(self) -> None:
        """Untie the model for fine-tuning: from now on ``x' = ReLU(RᵀW x + b)`` with the
        read-out ``R`` fixed at the current ``W`` and ``b`` frozen; only the writer ``W``
        (``x -> h``) trains, like an adapter on an early layer with the rest of the network
        frozen."""
        self.readout = self.W.detach().clone()
        self.b.requires_grad_(False)

    def hidden(self, x: Tensor) -> Tensor:
        """``[I, B, n] -> [I, B, m]``: the compressed representation ``h = W x``."""
        return torch.bmm(x, self.W.transpose(1, 2))

    def forward(self, x: Tensor) -> Tensor:
        """``[I, B, n] -> [I, B, n]``: the reconstruction ``ReLU(WᵀW x + b)`` (``RᵀW`` once
        the read-out is frozen)."""
        reader = self.W if self.readout is None else self.readout
        gram = self.W.transpose(1, 2) @ reader  # [I, n, n]; cheaper than going through h
        return torch.relu(torch.baddbmm(self.b.unsqueeze(1), x, gram))

    @classmethod
    def from_weights(cls, W: Tensor, b: Tensor) -> ToyModel:
        """A model holding copies of ``W`` (``[I, m, n]``) and ``b`` (``[I, n]``)."""
        i, m, n = W.shape
        model = cls(ToyConfig(n, m, i))
        with torch.no_grad():
            model.W.copy_(W)
            model.b.copy_(b)
        return model
