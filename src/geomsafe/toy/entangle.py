"""Entanglement: fine-tune a trained toy model to boost one target feature, measure the
collateral change of every other feature's read-out against its cosine with the target, and
remove it for chosen (protected) features with the toy ``orthogonal`` guard.

Set-up. ``n_bases`` base models (``n`` sparse features in ``m`` dimensions, in superposition)
are trained. Each base is copied once per represented target feature and every copy is
fine-tuned at once (one instance each) on the same sparse data, with the target's label scaled
by ``boost`` (``y_t = boost * x_t``) and its importance multiplied by ``target_importance``;
the other features' reconstruction loss stays (scaled by ``other_importance``, default 1).

What trains. With ``readout="frozen"`` (default) fine-tuning updates only the writer ``W`` of
``h = W x``; the read-out ``x' = ReLU(W⁰ᵀ h + b⁰)`` stays at the base model's, like an adapter
on an early layer of an LLM whose later layers (and the atlas's probes) are frozen. With
``readout="tied"`` the toy's tied weights move the read-out too; the model then re-aims every
feature's read-out away from the grown target and the output-level collateral mostly vanishes
(the representation-level one stays), which is why it is not the default.

Read-outs, on the input where only the target is active (``x = x_t e_t``):

* **probe read-out** of feature ``j``: ``Ŵ⁰_j · W_t``, the target's hidden vector read along
  ``j``'s pre-fine-tuning direction (the toy's linear probe). Its change ``Ŵ⁰_j · ΔW_t`` is the
  **collateral** of ``j``.
* **output read-out** of ``j``: ``mean_{x_t ∈ (0, 1]} ReLU(R_j · W_t x_t + b_j)`` (``R = W⁰``
  when frozen), the model's false-positive output for ``j``; the ReLU and the negative biases
  hide small changes, so it is sparser than the probe read-out.
* **target gain**: change of the target's own output read-out ``mean ReLU(R_t·W_t x_t + b_t)``;
  the fine-tune asks for ``(boost - 1) / 2``.

Guard (the toy equivalent of ``geomsafe.guard.orthogonal``). For each target the *protected*
features are the ``protect`` other represented features with the highest cosine to it (the
ones an audit would flag as most at risk; ``protect < m`` so the target keeps room to grow).
``U`` is an orthonormal basis of their pre-fine-tuning directions ``W⁰_j``; after every
optimiser step the update is projected, ``W ← W⁰ + (I - UUᵀ)(W - W⁰)``, so fine-tuning writes
nothing along the protected directions and their read-out of *any* input is unchanged (exactly,
with the frozen read-out), as the LLM guard projects the LoRA update of the residual-stream
writers off the harmful directions. Every column of ``W`` is projected; biases are untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from geomsafe.config import at_least, option, require
from geomsafe.stats import correlation
from geomsafe.toy.metrics import REPRESENTED, cosines, norms, unit_columns
from geomsafe.toy.model import ToyConfig, ToyModel
from geomsafe.toy.train import ToyTrainConfig, importance_vector, train

_GRID = torch.linspace(0.0, 1.0, 101)[1:]  # target values x_t for the output read-outs


@dataclass(frozen=True)
class EntangleConfig:
    n_features: int = option(20, "Input features n.")
    n_hidden: int = option(7, "Hidden dimensions m (< n: superposition).")
    sparsity: float = option(0.9, "Sparsity S of every feature, in [0, 1).")
    importance_decay: float = option(1.0, "Importance of feature i: decay ** i.")
    n_bases: int = option(3, "Base models trained (seeds seed, seed + 1, ...).")
    base_steps: int = option(5000, "Adam steps of each base model.")
    base_lr: float = option(3e-3, "Learning rate of the base models.")
    boost: float = option(2.0, "The fine-tune asks for y_t = boost * x_t on the target.")
    target_importance: float = option(5.0, "Importance multiplier of the target feature.")
    other_importance: float = option(1.0, "Loss scale of the other features.")
    readout: str = option(
        "frozen", "frozen (only the writer W trains) or tied (the read-out moves too)."
    )
    finetune_steps: int = option(1000, "Adam steps of each fine-tune.")
    finetune_lr: float = option(2e-3, "Learning rate of the fine-tunes.")
    protect: int = option(2, "Protected features: the target's nearest represented ones.")
    batch_size: int = option(1024, "Fresh samples per step.")
    seed: int = option(0, "Seed of the bases, targets and batches.")

    def __post_init__(self) -> None:
        require(0.0 <= self.sparsity < 1.0, f"sparsity must be in [0, 1), got {self.sparsity}")
        require(
            self.n_hidden < self.n_features,
            "entanglement needs n_hidden < n_features (superposition)",
        )
        require(
            0 < self.protect < self.n_hidden,
            f"protect must be in [1, n_hidden), got {self.protect}",
        )
        require(
            self.readout in ("frozen", "tied"),
            f"readout must be 'frozen' or 'tied', got {self.readout!r}",
        )
        at_least(self, 1, "n_bases")


@dataclass
class Arm:
    """One fine-tuning arm (with or without guard): per-pair and summary numbers."""

    probe_collateral: list[float]
    output_collateral: list[float]
    target_gain: list[float]
    seconds: float
    history: list[float] = field(default_factory=list)


@dataclass
class EntangleResult:
    config: EntangleConfig
    targets: list[tuple[int, int]]
    """(base, target) of each fine-tuned copy."""
    pairs: list[tuple[int, int, int]]
    """(copy, target, other) for every other represented feature, in the order of the lists."""
    cosine: list[float]
    protected: list[bool]
    free: Arm
    guarded: Arm
    base_W: Tensor  # [n_bases, m, n]
    finetuned_W: Tensor  # [copies, m, n] without guard

    def summary(self) -> dict[str, float]:
        """The headline numbers (see the module docstring for the definitions)."""
        cos = np.asarray(self.cosine)
        prot = np.asarray(self.protected)
        out: dict[str, float] = {"n_pairs": float(len(cos)), "n_targets": float(len(self.targets))}
        for name, arm in (("free", self.free), ("guarded", self.guarded)):
            probe = np.asarray(arm.probe_collateral)
            output = np.asarray(arm.output_collateral)
            for kind, values in (("probe", probe), ("output", output)):
                corr = correlation(cos, values)
                out[f"{name}_pearson_{kind}"] = corr["pearson"]
                out[f"{name}_spearman_{kind}"] = corr["spearman"]
            out[f"{name}_probe_collateral_protected"] = float(probe[prot].mean())
            out[f"{name}_probe_collateral_unprotected"] = float(probe[~prot].mean())
            out[f"{name}_output_collateral_protected"] = float(output[prot].mean())
            out[f"{name}_output_collateral_unprotected"] = float(output[~prot].mean())
            out[f"{name}_target_gain"] = float(np.mean(arm.target_gain))
        out["target_gain_requested"] = (self.config.boost - 1.0) / 2.0
        out["target_gain_kept"] = out["guarded_target_gain"] / max(out["free_target_gain"], 1e-12)
        free = out["free_probe_collateral_protected"]
        out["protected_collateral_removed"] = (
            1.0 - out["guarded_probe_collateral_protected"] / free if free > 0 else float("nan")
        )
        return out

    def timing(self) -> dict[str, float]:
        return {
            "finetune_free_s": self.free.seconds,
            "finetune_guarded_s": self.guarded.seconds,
            "guard_overhead_ratio": self.guarded.seconds / max(self.free.seconds, 1e-12),
        }


class ToyOrthogonalGuard:
    """After each step: ``W ← W⁰ + (I - UUᵀ)(W - W⁰)`` per instance, ``U`` an orthonormal basis
    of the protected features' pre-fine-tuning directions."""

    def __init__(self, W0: Tensor, protected: Tensor, tol: float = 1e-6) -> None:
        """``W0``: ``[I, m, n]``; ``protected``: ``[I, k]`` feature indices per instance."""
        self.W0 = W0.detach().clone()
        cols = torch.gather(W0, 2, protected.unsqueeze(1).expand(-1, W0.shape[1], -1))
        q, r = torch.linalg.qr(cols.double())  # [I, m, k]
        diag = r.diagonal(dim1=-2, dim2=-1).abs()
        keep = diag > tol * diag.amax(-1, keepdim=True).clamp_min(1.0)
        q = q * keep.unsqueeze(1)  # drop directions already in the span
        eye = torch.eye(W0.shape[1], dtype=torch.float64)
        self.projector = (eye - q @ q.transpose(1, 2)).float()  # [I, m, m]

    def __call__(self, model: ToyModel) -> None:
        model.W.copy_(self.W0 + self.projector @ (model.W - self.W0))


def output_readout(reader: Tensor, W: Tensor, b: Tensor, target: Tensor) -> Tensor:
    """``[I, n]`` mean over ``x_t ∈ (0, 1]`` of every feature's output when only ``target[i]``
    is active: ``ReLU(R_jᵀ W_t x_t + b_j)`` (``R = W`` for the tied model)."""
    w_t = W[torch.arange(W.shape[0]), :, target]  # [I, m]
    slope = torch.einsum("imn,im->in", reader, w_t)
    return torch.relu(slope.unsqueeze(-1) * _GRID + b.unsqueeze(-1)).mean(-1)


def probe_readout(W: Tensor, W0: Tensor, target: Tensor) -> Tensor:
    """``[I, n]`` ``Ŵ⁰_j · W_t``: the target's hidden vector read along every feature's
    pre-fine-tuning direction."""
    w_t = W[torch.arange(W.shape[0]), :, target]
    return torch.einsum("imn,im->in", unit_columns(W0), w_t)


def protected_features(W0: Tensor, target: Tensor, represented: Tensor, k: int) -> Tensor:
    """``[I, k]``: per instance, the ``k`` other represented features closest in cosine to the
    target (ties: lowest index)."""
    cos = cosines(W0)[torch.arange(W0.shape[0]), target]  # [I, n]
    cos = cos.masked_fill(~represented, -2.0)
    cos[torch.arange(W0.shape[0]), target] = -3.0
    return torch.topk(cos, k, dim=-1).indices


def run_entanglement(
    config: EntangleConfig, progress: Callable[[int], object] | None = None
) -> EntangleResult:
    """Train the base models, fine-tune every (base, represented target) copy with and without
    the guard, and collect the read-out changes. ``progress(k)``: ``k`` more steps done (of
    ``base_steps + 2 * finetune_steps``)."""
    c = config
    update = progress
    n, m = c.n_features, c.n_hidden
    importance = importance_vector(n, c.importance_decay)
    probability = torch.full((1, n), 1.0 - c.sparsity)
    generator = torch.Generator().manual_seed(c.seed)
    base = ToyModel(ToyConfig(n, m, c.n_bases), generator)
    train(
        base,
        importance,
        probability,
        ToyTrainConfig(c.base_steps, c.batch_size, c.base_lr, c.seed),
        progress=update,
    )
    W_base, b_base = base.W.detach(), base.b.detach()
    represented = norms(W_base) > REPRESENTED  # [bases, n]

    targets = [(i, t) for i in range(c.n_bases) for t in range(n) if represented[i, t]]
    index = torch.tensor([i for i, _ in targets])
    target = torch.tensor([t for _, t in targets])
    copies = len(targets)
    W0, b0 = W_base[index].clone(), b_base[index].clone()
    rep = represented[index]
    label_scale = torch.ones(copies, n)
    label_scale[torch.arange(copies), target] = c.boost
    imp = importance.expand(copies, n) * c.other_importance
    imp[torch.arange(copies), target] = importance[target] * c.target_importance
    protected = protected_features(W0, target, rep, c.protect)
    ft = ToyTrainConfig(c.finetune_steps, c.batch_size, c.finetune_lr, c.seed + 1)

    arms = {}
    finetuned: dict[str, Tensor] = {}
    for name in ("free", "guarded"):
        model = ToyModel.from_weights(W0, b0)
        if c.readout == "frozen":
            model.freeze_readout()
        guard = ToyOrthogonalGuard(W0, protected) if name == "guarded" else None
        start = time.perf_counter()
        history = train(
            model, imp, probability, ft, label_scale=label_scale, after_step=guard, progress=update
        )
        seconds = time.perf_counter() - start
        W, b = model.W.detach(), model.b.detach()
        finetuned[name] = W
        probe = probe_readout(W, W0, target) - probe_readout(W0, W0, target)
        reader = W0 if c.readout == "frozen" else W
        output = output_readout(reader, W, b, target) - output_readout(W0, W0, b0, target)
        arms[name] = (probe, output, seconds, history)

    pairs, cos_list, prot_list = [], [], []
    cos_all = cosines(W0)
    prot_mask = torch.zeros(copies, n, dtype=torch.bool)
    prot_mask[torch.arange(copies).unsqueeze(1), protected] = True
    for k in range(copies):
        t = int(target[k])
        for j in range(n):
            if j == t or not rep[k, j]:
                continue
            pairs.append((k, t, j))
            cos_list.append(float(cos_all[k, t, j]))
            prot_list.append(bool(prot_mask[k, j]))

    def arm(name: str) -> Arm:
        probe, output, seconds, history = arms[name]
        return Arm(
            probe_collateral=[float(probe[k, j]) for k, _, j in pairs],
            output_collateral=[float(output[k, j]) for k, _, j in pairs],
            target_gain=[float(output[k, int(target[k])]) for k in range(copies)],
            seconds=seconds,
            history=history,
        )

    return EntangleResult(
        config=c,
        targets=targets,
        pairs=pairs,
        cosine=cos_list,
        protected=prot_list,
        free=arm("free"),
        guarded=arm("guarded"),
        base_W=W_base,
        finetuned_W=finetuned["free"],
    )


def default_entangle(quick: bool, seed: int) -> EntangleConfig:
    if quick:
        return EntangleConfig(
            n_bases=1,
            base_steps=1000,
            base_lr=5e-3,
            finetune_steps=300,
            batch_size=512,
            seed=seed,
        )
    return EntangleConfig(seed=seed)
