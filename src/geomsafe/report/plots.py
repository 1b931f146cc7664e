"""Plots as inline SVG strings (matplotlib, Agg), so the report needs no network to view."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

plt.rcParams.update(
    {
        "svg.fonttype": "none",
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "svg.hashsalt": "geomsafe",
    }
)


PALETTE = ("#c0392b", "#2980b9", "#27ae60", "#8e44ad", "#f39c12")  # one colour per group


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def overlap_layers(per_layer: Sequence[dict], title: str) -> str:
    """Overlap score per layer with its permutation null band (mean .. 95th percentile)."""
    fig, ax = plt.subplots(figsize=(6, 2.6))
    x = [r["layer"] for r in per_layer]
    ax.plot(x, [r["score"] for r in per_layer], "o-", color="#c0392b", ms=3, label="overlap")
    if "null_q95" in per_layer[0]:
        ax.fill_between(
            x,
            [r["null_mean"] for r in per_layer],
            [r["null_q95"] for r in per_layer],
            color="#7f8c8d",
            alpha=0.3,
            label="null band (mean–95%)",
        )
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("overlap score")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


def heatmap(matrix: Sequence[Sequence[float]], labels: Sequence[str], title: str) -> str:
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(0.42 * len(labels) + 2, 0.42 * len(labels) + 1.2))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{m[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if abs(m[i, j]) > 0.6 else "black",
            )
    fig.colorbar(im, ax=ax, shrink=0.7, label="cosine")
    ax.set_title(title)
    return _svg(fig)


def density(rows: Sequence[dict]) -> str:
    fig, ax = plt.subplots(figsize=(6, 2.6))
    x = [r["layer"] for r in rows]
    ax.plot(x, [r["density"] for r in rows], "o-", ms=3, label="features (mean cos²)")
    base = np.array([r["baseline"] for r in rows])
    sd = np.array([r["baseline_sd"] for r in rows])
    ax.plot(x, base, "--", color="#7f8c8d", label="random from layer covariance")
    ax.fill_between(x, base - sd, base + sd, color="#7f8c8d", alpha=0.2)
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("mean squared cosine")
    ax2 = ax.twinx()
    ax2.plot(x, [r["effective_rank"] for r in rows], ":", color="#27ae60", label="effective rank")
    ax2.set_ylabel("effective rank", color="#27ae60")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], frameon=False, fontsize=7)
    ax.set_title("superposition density per layer")
    return _svg(fig)


def pca_map(vectors: np.ndarray, labels: Sequence[str], kinds: Sequence[str], title: str) -> str:
    """2-D PCA of unit feature directions (via SVD of the centred matrix)."""
    centred = vectors - vectors.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    colours = {"harmful": "#c0392b", "target": "#2980b9", "control": "#7f8c8d"}
    fig, ax = plt.subplots(figsize=(5, 4))
    for (x, y), name, kind in zip(xy, labels, kinds, strict=True):
        ax.scatter(x, y, color=colours.get(kind, "#8e44ad"), s=25)
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    return _svg(fig)


def bars(
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    xlabel: str,
    errors: Sequence[tuple[float, float]] | None = None,
) -> str:
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(labels) + 1))
    y = np.arange(len(labels))
    xerr = None
    if errors is not None:
        xerr = np.array(
            [
                [v - lo for (lo, _), v in zip(errors, values, strict=True)],
                [hi - v for (_, hi), v in zip(errors, values, strict=True)],
            ]
        )
    ax.barh(y, values, xerr=xerr, color=["#c0392b" if v > 0 else "#2980b9" for v in values])
    ax.set_yticks(y, labels)
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _svg(fig)


def curves(steps: Sequence[int], series: dict[str, Sequence[float]], title: str) -> str:
    fig, ax = plt.subplots(figsize=(6, 2.6))
    for name, ys in series.items():
        ax.plot(steps, ys, label=name, lw=1)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=7)
    return _svg(fig)


def forest(
    labels: Sequence[str],
    values: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    title: str,
    xlabel: str,
) -> str:
    """Point estimates with their 95% CIs, one row each, and a line at zero (a forest plot)."""
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(labels) + 1))
    y = np.arange(len(labels))[::-1]
    for yi, v, lo, hi in zip(y, values, lows, highs, strict=True):
        colour = "#c0392b" if lo > 0 else "#2980b9" if hi < 0 else "#555555"
        ax.plot([lo, hi], [yi, yi], color=colour, lw=1.5)
        ax.plot([v], [yi], "o", color=colour, ms=4)
    ax.set_yticks(y, labels)
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _svg(fig)


def scatter(
    xs: Sequence[float],
    ys: Sequence[float],
    names: Sequence[str],
    groups: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
    yerr: Sequence[tuple[float, float]] | None = None,
    legend_title: str = "guard",
) -> str:
    """One labelled point per item, coloured by group, with optional vertical CI bars."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    colours = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(dict.fromkeys(groups))}
    for i, (x, y, name, g) in enumerate(zip(xs, ys, names, groups, strict=True)):
        if yerr is not None:
            lo, hi = yerr[i]
            ax.plot([x, x], [lo, hi], color=colours[g], lw=0.8, alpha=0.6)
        ax.scatter([x], [y], color=colours[g], s=25, label=g)
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), frameon=False, fontsize=7, title=legend_title)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _svg(fig)


#: One line of :func:`line_panels`: x values, y values and optional (low, high) per point.
Line = tuple[Sequence[float], Sequence[float], Sequence[tuple[float, float]] | None]


def line_panels(panels: Sequence[tuple[str, Mapping[str, Line]]], xlabel: str, title: str) -> str:
    """Side-by-side panels over a shared x, each ``(ylabel, {series name: Line})``: one line
    with markers per series (the i-th series of every panel in the i-th colour) and, where
    given, vertical error bars (e.g. 95% CIs); non-finite points are left out."""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels) + 0.6, 3.2), squeeze=False, layout="constrained"
    )
    for ax, (ylabel, series) in zip(axes[0], panels, strict=True):
        for k, (name, (xs, ys, errs)) in enumerate(series.items()):
            pts = zip(xs, ys, strict=True)
            keep = [i for i, (x, y) in enumerate(pts) if np.isfinite([x, y]).all()]
            x = np.array([xs[i] for i in keep], dtype=float)
            y = np.array([ys[i] for i in keep], dtype=float)
            yerr = None
            if errs is not None:
                lo = np.array([errs[i][0] for i in keep], dtype=float)
                hi = np.array([errs[i][1] for i in keep], dtype=float)
                ok = np.isfinite(lo) & np.isfinite(hi)
                yerr = np.clip(np.where(ok, [y - lo, hi - y], 0.0), 0.0, None)
            ax.errorbar(
                x,
                y,
                yerr=yerr,
                fmt="o-",
                ms=3,
                lw=1,
                capsize=2,
                color=PALETTE[k % len(PALETTE)],
                label=name,
            )
        ax.axhline(0, color="black", lw=0.4)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _svg(fig)


def grouped_bars(
    categories: Sequence[str],
    series: dict[str, Sequence[tuple[float, float, float]]],
    title: str,
    ylabel: str,
) -> str:
    """Bars per category and series; each value is (estimate, CI low, CI high)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(categories) + 2), 3))
    x = np.arange(len(categories))
    width = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series.items()):
        v = np.array([t[0] for t in vals])
        err = np.array([[t[0] - t[1] for t in vals], [t[2] - t[0] for t in vals]])
        pos = x + (i - (len(series) - 1) / 2) * width
        ax.bar(pos, v, width, yerr=err, capsize=2, label=name, color=PALETTE[i % len(PALETTE)])
    ax.set_xticks(x, categories, rotation=20, ha="right")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=7, title="guard")
    return _svg(fig)


def threshold_hist(
    series: dict[str, Sequence[float]], threshold: float, title: str, xlabel: str
) -> str:
    """Overlaid histograms of score sets with a dashed line at the threshold τ."""
    fig, ax = plt.subplots(figsize=(5, 2.6))
    values = [np.asarray([v for v in vs if v is not None], dtype=float) for vs in series.values()]
    pooled = np.concatenate([v for v in values if v.size] + [np.asarray([threshold])])
    bins = np.linspace(pooled.min(), pooled.max(), 31) if np.ptp(pooled) > 0 else 10
    for i, (name, v) in enumerate(zip(series, values, strict=True)):
        if v.size:
            ax.hist(
                v,
                bins=bins,
                histtype="step",
                lw=1.2,
                color=PALETTE[i % len(PALETTE)],
                label=f"{name} (n={v.size})",
                density=True,
            )
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"τ = {threshold:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=7)
    return _svg(fig)
