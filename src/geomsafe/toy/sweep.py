"""The classic experiments: 2-D feature polygons, the sparsity sweep, and the ``n=2, m=1``
phase diagram. Every experiment trains all its models at once (one instance each)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from geomsafe.config import above, at_least, option, require
from geomsafe.toy.metrics import REPRESENTED, dimensionality, dims_per_feature, norms
from geomsafe.toy.model import ToyConfig, ToyModel
from geomsafe.toy.train import ToyTrainConfig, importance_vector, reconstruction_loss, train

Progress = Callable[[int], object] | None


@dataclass(frozen=True)
class SweepConfig:
    """``n`` features into ``m`` dimensions, one model per sparsity."""

    n_features: int = option(help="Input features n.")
    n_hidden: int = option(help="Hidden dimensions m.")
    sparsities: tuple[float, ...] = option(help="Sparsities S, one model each, in [0, 1).")
    importance_decay: float = option(1.0, "Importance of feature i: decay ** i.")
    steps: int = option(5000, "Adam steps.")
    batch_size: int = option(1024, "Fresh samples per step.")
    lr: float = option(1e-3, "Learning rate.")
    seed: int = option(0, "Seed of the init and the batches.")

    def __post_init__(self) -> None:
        at_least(self, 1, "n_features", "n_hidden")
        require(
            bool(self.sparsities) and all(0.0 <= s < 1.0 for s in self.sparsities),
            f"sparsities must be in [0, 1), got {self.sparsities}",
        )


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

    size: int = option(16, "Cells per side of the grid.")
    importance_range: tuple[float, float] = option(
        (0.1, 10.0), "Importance r of the extra feature: log-spaced over this range."
    )
    density_range: tuple[float, float] = option(
        (1.0, 0.01), "Density 1 - S of both features: log-spaced over this range."
    )
    restarts: int = option(3, "Random inits per cell (the lowest loss is kept).")
    steps: int = option(2000, "Adam steps.")
    batch_size: int = option(512, "Fresh samples per step.")
    lr: float = option(1e-2, "Learning rate.")
    seed: int = option(0, "Seed of the inits and the batches.")

    def __post_init__(self) -> None:
        at_least(self, 1, "size", "restarts", "batch_size")
        at_least(self, 0, "steps")
        above(self, 0, "lr")
        require(
            min(self.importance_range) > 0 and min(self.density_range) > 0,
            "importance_range and density_range must be > 0 (log-spaced)",
        )


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
