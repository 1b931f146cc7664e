"""Synthetic sparse features and the training loop of the toy models.

Each feature is zero with probability ``S`` (the sparsity) and uniform on ``[0, 1]``
otherwise; ``feature_probability = 1 - S``. The loss is the importance-weighted squared error
``Σ_i I_i (y_i - x'_i)²`` (mean over the batch, sum over features and instances), where the
label ``y`` is the input ``x`` itself, or ``x`` with some features scaled (fine-tuning).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from geomsafe.config import above, at_least, option
from geomsafe.toy.model import ToyModel


@dataclass(frozen=True)
class ToyTrainConfig:
    """Optimiser settings: Adam, a fresh batch every step; with ``cosine`` the learning rate
    decays from ``lr`` to ``lr / 20`` along a half cosine (cleaner final weights)."""

    steps: int = option(5000, "Adam steps.")
    batch_size: int = option(1024, "Fresh samples per step.")
    lr: float = option(1e-3, "Learning rate.")
    seed: int = option(0, "Seed of the batches.")
    cosine: bool = option(True, "Decay the learning rate to lr / 20 along a half cosine.")

    def __post_init__(self) -> None:
        at_least(self, 0, "steps")
        at_least(self, 1, "batch_size")
        above(self, 0, "lr")


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (restored after).

    The toy tensors are a few kB: splitting them over threads only adds synchronisation, which
    costs 5-30x on a busy 2-core machine. One thread also makes float results independent of
    the machine's core count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def importance_vector(n_features: int, decay: float = 1.0) -> Tensor:
    """``[n]`` importances ``decay ** i`` (1.0: all features equally important)."""
    return decay ** torch.arange(n_features, dtype=torch.float32)


def sample_features(
    batch_size: int, feature_probability: Tensor, generator: torch.Generator
) -> Tensor:
    """``[I, B, n]`` inputs from ``feature_probability`` (``[I, n]``): each entry is
    ``U[0, 1]`` with its feature's probability, else 0.

    One uniform draw ``u`` per entry: the entry is ``u / p`` where ``u < p`` (given ``u < p``,
    ``u / p`` is uniform on ``[0, 1)``), else 0.
    """
    n_instances, n_features = feature_probability.shape
    u = torch.rand((n_instances, batch_size, n_features), generator=generator)
    p = feature_probability.unsqueeze(1)
    return torch.where(u < p, u / p, torch.zeros(()))


def weighted_loss(out: Tensor, target: Tensor, importance: Tensor) -> Tensor:
    """Importance-weighted squared error (``importance`` is ``[I, n]``): mean over the batch,
    sum over features and instances."""
    return (importance.unsqueeze(1) * (target - out) ** 2).mean(1).sum()


def train(
    model: ToyModel,
    importance: Tensor,
    feature_probability: Tensor,
    config: ToyTrainConfig,
    *,
    label_scale: Tensor | None = None,
    after_step: Callable[[ToyModel], None] | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[float]:
    """Train ``model`` in place; returns the loss (mean per instance) every 100 steps.

    ``importance``, ``feature_probability`` and ``label_scale`` (default 1: the label is the
    input) broadcast to ``[I, n]``; the label is ``label_scale * x``. ``after_step(model)`` runs
    after each optimiser step (the guard's hook); ``progress(k)`` is told ``k`` more steps are
    done. Seeded by ``config.seed``: the same seed gives the same batches.
    """
    shape = model.b.shape
    importance = importance.expand(shape)
    probability = feature_probability.expand(shape)
    scale = None if label_scale is None else label_scale.expand(shape).unsqueeze(1)
    generator = torch.Generator().manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=config.lr)
    schedule = None
    if config.cosine and config.steps > 1:
        span = config.steps - 1
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda k: 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * k / span))
        )
    history: list[float] = []
    done = 0
    with single_thread():
        for step in range(config.steps):
            x = sample_features(config.batch_size, probability, generator)
            y = x if scale is None else x * scale
            loss = weighted_loss(model(x), y, importance)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if schedule is not None:
                schedule.step()
            if after_step is not None:
                with torch.no_grad():
                    after_step(model)
            if step % 100 == 0:
                history.append(loss.item() / shape[0])
            if progress is not None and (step + 1) % 100 == 0:
                progress(step + 1 - done)
                done = step + 1
    if progress is not None and done < config.steps:
        progress(config.steps - done)
    return history


@torch.no_grad()
def reconstruction_loss(
    model: ToyModel,
    importance: Tensor,
    feature_probability: Tensor,
    *,
    batch_size: int = 8192,
    seed: int = 12345,
) -> Tensor:
    """``[I]`` loss of each instance on one large fixed batch (to compare restarts)."""
    shape = model.b.shape
    generator = torch.Generator().manual_seed(seed)
    with single_thread():
        x = sample_features(batch_size, feature_probability.expand(shape), generator)
        err = importance.expand(shape).unsqueeze(1) * (x - model(x)) ** 2
    return err.mean(1).sum(-1)
