"""`bench`: the end-to-end benchmark table (see :mod:`geomsafe.bench.run`)."""

from __future__ import annotations

from geomsafe.bench.config import FULL, QUICK, BenchConfig, preset
from geomsafe.bench.run import BENCH_JSON, BenchResult, bench
from geomsafe.bench.table import COLUMNS, cells, correlation, correlation_lines, correlations
from geomsafe.bench.tasks import Task, resolve_task, resolve_tasks

__all__ = [
    "BENCH_JSON",
    "COLUMNS",
    "FULL",
    "QUICK",
    "BenchConfig",
    "BenchResult",
    "Task",
    "bench",
    "cells",
    "correlation",
    "correlation_lines",
    "correlations",
    "preset",
    "resolve_task",
    "resolve_tasks",
]
