"""Figures of the toy experiments (matplotlib object API on the Agg canvas; no pyplot state).

Every figure is written twice, ``NAME.png`` and ``NAME.svg``, each atomically.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from geomsafe.artefacts import atomic_write
from geomsafe.toy.entangle import EntangleResult
from geomsafe.toy.metrics import REPRESENTED, gram, interference
from geomsafe.toy.sweep import PHASES, PhaseResult, SweepResult

_RC: dict[str, Any] = {
    "font.size": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",
    "svg.hashsalt": "geomsafe-toy",
}
PHASE_COLOURS = ("#d9d9d9", "#4c72b0", "#dd8452")
FREE, GUARDED = "#4c72b0", "#dd8452"


def _style() -> AbstractContextManager[None]:
    """The figures' rc settings, applied only inside the block."""
    return matplotlib.rc_context(_RC)  # type: ignore[arg-type]


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``fig`` as ``out_dir/name.png`` and ``.svg``; returns both paths."""
    paths = []
    with _style():
        for ext in ("png", "svg"):
            path = out_dir / f"{name}.{ext}"
            kwargs = {"dpi": 150} if ext == "png" else {"metadata": {"Date": None}}

            def write(tmp: str, ext: str = ext, kwargs: dict = kwargs) -> None:
                fig.savefig(tmp, format=ext, bbox_inches="tight", **kwargs)

            atomic_write(path, write)
            paths.append(path)
    return paths


def _num(value: float) -> str:
    """Three decimals, without a "-0.000" for round-off."""
    return f"{0.0 if abs(value) < 5e-4 else value:.3f}"


def _figure(width: float, height: float) -> Figure:
    with _style():
        return Figure(figsize=(width, height), layout="constrained")


def polygons(result: SweepResult, out_dir: Path, name: str = "polygons") -> list[Path]:
    """The ``m = 2`` models: each feature's column ``W_i`` drawn as a vector in the plane."""
    W = result.W.numpy()
    dims = result.dimensionality.numpy()
    count, _, n = W.shape
    importance = result.config.importance_decay ** np.arange(n)
    with _style():
        fig = _figure(2.1 * count, 2.6)
        axes = fig.subplots(1, count, squeeze=False)[0]
        colours = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, n))
        for k, ax in enumerate(axes):
            theta = np.linspace(0, 2 * math.pi, 200)
            ax.plot(np.cos(theta), np.sin(theta), color="#dddddd", lw=0.8)
            for i in range(n):
                x, y = W[k, 0, i], W[k, 1, i]
                ax.plot([0, x], [0, y], color=colours[i], lw=1.6)
                ax.plot([x], [y], "o", color=colours[i], ms=4)
                if math.hypot(x, y) > 0.15:
                    ax.annotate(str(i), (x * 1.15, y * 1.15), ha="center", va="center", size=7)
            ax.set_xlim(-1.5, 1.5)
            ax.set_ylim(-1.5, 1.5)
            ax.set_aspect("equal")
            ax.set_axis_off()
            kept = int((np.linalg.norm(W[k], axis=0) > REPRESENTED).sum())
            rep = dims[k][np.linalg.norm(W[k], axis=0) > REPRESENTED]
            mean_d = float(rep.mean()) if len(rep) else 0.0
            ax.set_title(
                f"S = {result.config.sparsities[k]:g}\n{kept} features, mean D = {mean_d:.2f}"
            )
        handles = [
            Line2D([], [], color=colours[i], lw=2, label=f"{i}: I={importance[i]:.2f}")
            for i in range(n)
        ]
        fig.legend(handles=handles, loc="outside right center", title="feature")
        fig.suptitle(
            f"{n} features in {result.W.shape[1]} dimensions: columns of W as the sparsity S grows"
        )
        return save(fig, out_dir, name)


def wtw(result: SweepResult, out_dir: Path, name: str = "wtw") -> list[Path]:
    """``WᵀW`` per sparsity (top) and the feature norms coloured by interference (bottom)."""
    G = gram(result.W).numpy()
    norms = result.norms.numpy()
    inter = interference(result.W).numpy()
    count, n, _ = G.shape
    with _style():
        fig = _figure(1.9 * count + 0.8, 4.0)
        axes = fig.subplots(2, count, squeeze=False, height_ratios=[1.0, 0.6])
        image = None
        for k in range(count):
            ax = axes[0, k]
            image = ax.imshow(G[k], cmap="RdBu_r", vmin=-1.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"S = {result.config.sparsities[k]:g}")
            bar = axes[1, k]
            share = np.clip(inter[k] / np.maximum(norms[k] ** 2, 1e-8), 0.0, 1.0)
            bar.bar(np.arange(n), norms[k], color=matplotlib.colormaps["plasma"](share))
            bar.set_ylim(0, 1.3)
            bar.set_xticks([])
            if k:
                bar.set_yticks([])
            else:
                bar.set_ylabel("‖W_i‖")
        if image is not None:
            fig.colorbar(image, ax=axes[0, :].tolist(), shrink=0.8, label="WᵀW")
        fig.suptitle(
            f"WᵀW of {n} features (importance {result.config.importance_decay:g}^i) in "
            f"{result.W.shape[1]} dims; bars: ‖W_i‖, colour = share of interference"
        )
        return save(fig, out_dir, name)


def dimensionality_plot(
    result: SweepResult, out_dir: Path, name: str = "dimensionality"
) -> list[Path]:
    """Dimensions per feature ``m/‖W‖_F²`` and each feature's ``D_i`` against ``1/(1-S)``."""
    inv = 1.0 / (1.0 - np.asarray(result.config.sparsities))
    dims = result.dimensionality.numpy()
    norms = result.norms.numpy()
    with _style():
        fig = _figure(6.0, 3.4)
        ax = fig.subplots()
        for frac, label in ((1, "1"), (3 / 4, "3/4"), (2 / 3, "2/3"), (1 / 2, "1/2")):
            ax.axhline(frac, color="#cccccc", lw=0.7, ls="--")
            ax.text(inv.max() * 1.08, frac, label, va="center", size=7, color="#777777")
        for frac, label in ((2 / 5, "2/5"), (1 / 3, "1/3")):
            ax.axhline(frac, color="#cccccc", lw=0.7, ls="--")
            ax.text(inv.max() * 1.08, frac, label, va="center", size=7, color="#777777")
        jitter = np.exp(np.linspace(-0.04, 0.04, dims.shape[1]))
        for k in range(len(inv)):
            keep = norms[k] > REPRESENTED
            ax.scatter(inv[k] * jitter[keep], dims[k][keep], s=6, color="#4c72b0", alpha=0.45, lw=0)
        ax.plot(inv, result.dims_per_feature.numpy(), "k-o", ms=3, label="m / ‖W‖²_F")
        ax.scatter([], [], s=6, color="#4c72b0", label="feature dimensionality D_i (‖W_i‖>0.5)")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.1)
        ax.set_xlabel("1 / (1 - S)   (S = sparsity)")
        ax.set_ylabel("dimensions per feature")
        ax.legend(loc="lower left", frameon=False)
        c = result.config
        ax.set_title(
            f"Features entering superposition: n={c.n_features}, m={c.n_hidden}, equal importance"
        )
        return save(fig, out_dir, name)


def phase_diagram(result: PhaseResult, out_dir: Path, name: str = "phase_diagram") -> list[Path]:
    """Phase of the extra feature of ``n=2, m=1`` models over importance x density."""
    ratio = result.relative_importance.numpy()
    density = result.density.numpy()

    def edges(v: np.ndarray) -> np.ndarray:
        logv = np.log10(v)
        mid = (logv[1:] + logv[:-1]) / 2
        return 10 ** np.concatenate([[2 * logv[0] - mid[0]], mid, [2 * logv[-1] - mid[-1]]])

    with _style():
        fig = _figure(4.8, 3.8)
        ax = fig.subplots()
        cmap = matplotlib.colors.ListedColormap(PHASE_COLOURS)
        ax.pcolormesh(
            edges(ratio), edges(density), result.phase.numpy(), cmap=cmap, vmin=-0.5, vmax=2.5
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("relative importance of the extra feature")
        ax.set_ylabel("feature density 1 - S")
        ax.legend(
            handles=[Patch(color=c, label=p) for c, p in zip(PHASE_COLOURS, PHASES, strict=True)],
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            frameon=False,
        )
        ax.set_title("Phase diagram, 2 features in 1 dimension")
        return save(fig, out_dir, name)


def collateral(result: EntangleResult, out_dir: Path, name: str = "collateral") -> list[Path]:
    """Collateral change of every other feature's read-out vs its cosine with the target,
    without and with the guard."""
    cos = np.asarray(result.cosine)
    prot = np.asarray(result.protected)
    s = result.summary()
    with _style():
        fig = _figure(9.0, 3.6)
        axes = fig.subplots(1, 2)
        panels = (
            ("probe", "probe read-out change  Ŵ⁰_j · ΔW_t"),
            ("output", "output read-out change  Δ mean x'_j"),
        )
        for ax, (kind, ylabel) in zip(axes, panels, strict=True):
            for arm, colour, label in (
                (result.free, FREE, "no guard"),
                (result.guarded, GUARDED, "orthogonal guard"),
            ):
                y = np.asarray(getattr(arm, f"{kind}_collateral"))
                ax.scatter(cos[~prot], y[~prot], s=7, color=colour, alpha=0.5, lw=0, label=label)
                ax.scatter(
                    cos[prot],
                    y[prot],
                    s=22,
                    facecolor="none",
                    edgecolor=colour,
                    lw=0.9,
                    label=f"{label}, protected",
                )
            ax.axhline(0, color="#999999", lw=0.6)
            ax.set_xlabel("cos(W_target, W_j) before fine-tuning")
            ax.set_ylabel(ylabel)
            ax.set_title(
                f"Pearson {s[f'free_pearson_{kind}']:.2f}, Spearman "
                f"{s[f'free_spearman_{kind}']:.2f} (no guard)"
            )
        axes[0].legend(loc="upper left", frameon=False, fontsize=7)
        fig.suptitle(
            f"Boosting one feature: target gain {s['free_target_gain']:.2f} (no guard) vs "
            f"{s['guarded_target_gain']:.2f} (guard); protected collateral "
            f"{_num(s['free_probe_collateral_protected'])} -> "
            f"{_num(s['guarded_probe_collateral_protected'])}"
        )
        return save(fig, out_dir, name)
