"""The classic experiments: 2-D feature polygons, the sparsity sweep, and the ``n=2, m=1``
phase diagram. Every experiment trains all its models at once (one instance each)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from geomsafe.toy.metrics import REPRESENTED, dimensionality, dims_per_feature, norms
from geomsafe.toy.model import ToyConfig, ToyModel
from geomsafe.toy.train import ToyTrainConfig, importance_vector, reconstruction_loss, train

Progress = Callable[[int], object] | None


@dataclass(frozen=True)
class SweepConfig:
    """``n`` features into ``m`` dimensions, one model per sparsity."""

    n_features: int
    n_hidden: int
    sparsities: tuple[float, ...]
    importance_decay: float = 1.0
    steps: int = 5000
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sparsities or not all(0.0 <= s < 1.0 for s in self.sparsities):
            raise ValueError(f"sparsities must be in [0, 1), got {self.sparsities}")


@dataclass
class SweepResult:
    config: SweepConfig
    W: Tensor  # [S, m, n]
    b: Tensor  # [S, n]
    loss: Tensor  # [S]

    @property
    def norms(self) -> Tensor:
        return norms(self.W)

    @property
    def dimensionality(self) -> Tensor:
        return dimensionality(self.W)

    @property
    def dims_per_feature(self) -> Tensor:
        return dims_per_feature(self.W)

    @property
    def n_represented(self) -> Tensor:
        return (self.norms > REPRESENTED).sum(-1)


def run_sweep(config: SweepConfig, progress: Progress = None) -> SweepResult:
    """Train one ``n -> m`` model per sparsity (same init seed for all)."""
    c = config
    generator = torch.Generator().manual_seed(c.seed)
    model = ToyModel(ToyConfig(c.n_features, c.n_hidden, len(c.sparsities)), generator)
    importance = importance_vector(c.n_features, c.importance_decay).expand(len(c.sparsities), -1)
    probability = (1.0 - torch.tensor(c.sparsities, dtype=torch.float32)).unsqueeze(1)
    train(
        model,
        importance,
        probability,
        ToyTrainConfig(c.steps, c.batch_size, c.lr, c.seed),
        progress=progress,
    )
    loss = reconstruction_loss(model, importance, probability)
    return SweepResult(c, model.W.detach().clone(), model.b.detach().clone(), loss)


@dataclass(frozen=True)
class PhaseConfig:
    """``n=2, m=1``: feature 1 has importance 1, the extra feature 2 has importance ``r``; both
    have density ``1 - S``. A ``size x size`` grid over log-spaced ``r`` and density; each cell
    keeps the lowest-loss of ``restarts`` random inits."""

    size: int = 16
    importance_range: tuple[float, float] = (0.1, 10.0)
    density_range: tuple[float, float] = (1.0, 0.01)
    restarts: int = 3
    steps: int = 2000
    batch_size: int = 512
    lr: float = 1e-2
    seed: int = 0


PHASES = ("not represented", "dedicated dimension", "superposition")
"""Phase codes 0, 1, 2 of the extra feature."""


@dataclass
class PhaseResult:
    config: PhaseConfig
    relative_importance: Tensor  # [size] (columns)
    density: Tensor  # [size] (rows)
    W: Tensor  # [size, size, 2]: (w1, w2) of the best restart per cell
    phase: Tensor  # [size, size] codes into PHASES


def classify_phase(w: Tensor, threshold: float = REPRESENTED) -> Tensor:
    """``[..., 2]`` weights of ``n=2, m=1`` models -> phase code of the extra feature:
    0 not represented, 1 dedicated dimension (feature 1 dropped), 2 superposition (both)."""
    extra = w[..., 1].abs() > threshold
    first = w[..., 0].abs() > threshold
    return torch.where(~extra, 0, torch.where(first, 2, 1))


def run_phase_diagram(config: PhaseConfig, progress: Progress = None) -> PhaseResult:
    c = config
    k, r = c.size, c.restarts
    lo, hi = c.importance_range
    ratio = torch.logspace(torch.log10(torch.tensor(lo)), torch.log10(torch.tensor(hi)), k)
    lo, hi = c.density_range
    density = torch.logspace(torch.log10(torch.tensor(lo)), torch.log10(torch.tensor(hi)), k)
    dens_grid, ratio_grid = torch.meshgrid(density, ratio, indexing="ij")  # [row, col]
    cells = k * k
    importance = torch.stack([torch.ones(cells), ratio_grid.flatten()], -1).repeat(r, 1)
    probability = dens_grid.flatten().unsqueeze(1).expand(-1, 2).repeat(r, 1)
    generator = torch.Generator().manual_seed(c.seed)
    model = ToyModel(ToyConfig(2, 1, cells * r), generator)
    train(
        model,
        importance,
        probability,
        ToyTrainConfig(c.steps, c.batch_size, c.lr, c.seed),
        progress=progress,
    )
    loss = reconstruction_loss(model, importance, probability).reshape(r, cells)
    best = loss.argmin(0)
    w = model.W.detach()[:, 0, :].reshape(r, cells, 2)[best, torch.arange(cells)]
    w = w.reshape(k, k, 2)
    return PhaseResult(c, ratio, density, w, classify_phase(w))


def default_polygons(quick: bool, seed: int) -> SweepConfig:
    """``n=5`` features in ``m=2`` (importance ``0.7^i``): the classic feature polygons."""
    return SweepConfig(
        n_features=5,
        n_hidden=2,
        sparsities=(0.0, 0.7, 0.9, 0.97, 0.99),
        importance_decay=0.7,
        steps=1000 if quick else 5000,
        batch_size=512 if quick else 1024,
        lr=1e-2 if quick else 3e-3,
        seed=seed,
    )


def default_wtw(quick: bool, seed: int) -> SweepConfig:
    """``n=20`` features in ``m=5`` (importance ``0.7^i``): ``WᵀW`` as the sparsity grows."""
    sparsities = (0.0, 0.7, 0.9, 0.99) if quick else (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
    return SweepConfig(
        n_features=20,
        n_hidden=5,
        sparsities=sparsities,
        importance_decay=0.7,
        steps=1000 if quick else 5000,
        batch_size=512 if quick else 1024,
        lr=5e-3 if quick else 3e-3,
        seed=seed,
    )


def default_dimensionality(quick: bool, seed: int) -> SweepConfig:
    """Equal importance, ``1/(1-S)`` log-spaced from 1 to 300: features entering
    superposition (``n=40, m=10``; quick ``n=20, m=5``)."""
    count = 6 if quick else 10
    inv = torch.logspace(0.0, torch.log10(torch.tensor(300.0)), count)
    return SweepConfig(
        n_features=20 if quick else 40,
        n_hidden=5 if quick else 10,
        sparsities=tuple(round(float(1.0 - 1.0 / v), 6) for v in inv),
        steps=1000 if quick else 4000,
        batch_size=512 if quick else 1024,
        lr=5e-3 if quick else 3e-3,
        seed=seed,
    )


def default_phase(quick: bool, seed: int) -> PhaseConfig:
    if quick:
        return PhaseConfig(size=8, restarts=2, steps=600, lr=2e-2, seed=seed)
    return PhaseConfig(seed=seed)
