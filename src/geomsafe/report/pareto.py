"""The guard Pareto part of the report (``pareto.json``, written by
``experiments/guard_pareto.py``): the frontier plot (harm ratio vs held-out loss ratio, one
point per guard setting, worst case over the data sets), the goal box, the settings table and
the recommended default."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from geomsafe.report import plots


def frontier_plot(summary: Mapping[str, Any]) -> str:
    """Harm ratio (y, with the CI of the worst data set) against loss ratio (x) per setting,
    coloured by guard; the goal's corner dashed; the Pareto front as a line."""
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(6, 4.2))
    goal = summary["goal"]
    guards = list(dict.fromkeys(s["guard"] for s in summary["settings"]))
    colour = {g: plots.PALETTE[i % len(plots.PALETTE)] for i, g in enumerate(guards)}
    points = {}
    best = (summary.get("recommended") or {}).get("key")
    for s in summary["settings"]:
        x, y = s["loss"], s["harm"]
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        points[s["key"]] = (x, y)
        if s["harm_ci"] and all(math.isfinite(v) for v in s["harm_ci"]):
            ax.plot([x, x], s["harm_ci"], color=colour[s["guard"]], lw=0.8, alpha=0.5)
        star = s["key"] == best
        ax.scatter(
            [x],
            [y],
            color=colour[s["guard"]],
            s=70 if star else 25,
            marker="*" if star else "o",
            label=s["guard"],
        )
        ax.annotate(s["strength"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = [points[k] for k in summary["front"] if k in points]
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), color="black", lw=0.7, alpha=0.6, label="front")
    ax.axhline(goal["harm"], color="grey", ls="--", lw=0.7)
    ax.axvline(goal["loss"], color="grey", ls="--", lw=0.7)
    ax.axhline(1.0, color="black", lw=0.4)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), frameon=False, fontsize=7)
    ax.set_xlabel("held-out task loss ratio (guarded / unguarded)")
    ax.set_ylabel("behavioural harm ratio (guarded / unguarded)")
    ax.set_title("guard Pareto frontier (worst case over data sets; goal: lower left of dashes)")
    return plots._svg(fig)


def section(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What the template shows."""
    settings = sorted(summary["settings"], key=lambda s: s["excess"])
    return {
        "plot": frontier_plot(summary),
        "settings": settings,
        "cells": summary["cells"],
        "front": summary["front"],
        "recommended": summary.get("recommended"),
        "rule": summary["goal"].get("rule", ""),
        "rule_rows": summary.get("rule_rows", []),
        "harm_rule": summary.get("harm_rule_text", ""),
        "command": summary.get("command"),
    }


__all__ = ["frontier_plot", "section"]
