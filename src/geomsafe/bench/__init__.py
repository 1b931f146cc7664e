"""`bench`: the end-to-end benchmark table (see :mod:`geomsafe.bench.run`).

Names are imported on first use, so the report can use :mod:`geomsafe.bench.table` without
importing the trainer that :mod:`geomsafe.bench.run` needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from geomsafe._lazy import lazy_exports

if TYPE_CHECKING:
    from geomsafe.bench.config import FULL, QUICK, BenchConfig, preset
    from geomsafe.bench.run import BenchResult, bench

__all__ = ["FULL", "QUICK", "BenchConfig", "BenchResult", "bench", "preset"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    globals(),
    {
        "FULL": "geomsafe.bench.config",
        "QUICK": "geomsafe.bench.config",
        "BenchConfig": "geomsafe.bench.config",
        "preset": "geomsafe.bench.config",
        "BenchResult": "geomsafe.bench.run",
        "bench": "geomsafe.bench.run",
    },
)
