"""The guard Pareto benchmark (issue 15): every guard at three strengths on harmful-ish and
benign training sets, judged in behaviour (log-odds rows) against the task cost (held-out loss)
and the time cost (step time), with a recommended default chosen from the data by a stated
rule. :mod:`.grid` (cells, strengths, resumable store), :mod:`.data` (training sets, rows),
:mod:`.frontier` (goal, front, rule; the ratio CIs: :mod:`geomsafe.stats`), :mod:`.summary`
(``pareto.json``, ``pareto.md``), :mod:`.run` (the runner). Script:
``experiments/guard_pareto.py``."""

from __future__ import annotations

from lib.pareto.data import TrainSet, concept_split, harm_rows, load_train_set
from lib.pareto.frontier import (
    Goal,
    Setting,
    pareto_front,
    recommend,
    settings,
)
from lib.pareto.grid import LEVELS, NONE, STRENGTHS, Cell, CellStore, cells, guard_config
from lib.pareto.run import PARETO_JSON, PARETO_MD, ParetoConfig, run_cell, run_grid
from lib.pareto.summary import cell_rows, markdown, summarise

__all__ = [
    "LEVELS",
    "NONE",
    "PARETO_JSON",
    "PARETO_MD",
    "STRENGTHS",
    "Cell",
    "CellStore",
    "Goal",
    "ParetoConfig",
    "Setting",
    "TrainSet",
    "cell_rows",
    "cells",
    "concept_split",
    "guard_config",
    "harm_rows",
    "load_train_set",
    "markdown",
    "pareto_front",
    "recommend",
    "run_cell",
    "run_grid",
    "settings",
    "summarise",
]
