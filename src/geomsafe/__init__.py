"""geomsafe: geometry-centric safety for LLM fine-tuning.

The user's loop in one import::

    import geomsafe
    lm = geomsafe.load("default")
    result = geomsafe.audit(lm, out="runs/audit")
    risk = geomsafe.predict(lm, "data.jsonl", atlas="runs/audit")
    run = geomsafe.finetune(lm, "data.jsonl", out="runs/ft", guard="orthogonal")
    ev = geomsafe.evaluate(lm, adapter="runs/ft")
    geomsafe.report("runs")

Every name is imported on first use (``import geomsafe`` does not import torch). The commands
``audit``, ``predict``, ``evaluate``, ``report``, ``bench``, ``toy`` and ``diff`` share their
name with their module; those modules are callable (``geomsafe.audit(...)`` runs the command whether
``geomsafe.audit`` was reached as the module or as the function).
"""

from __future__ import annotations

import importlib
import sys
import types
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("geomsafe")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"

# name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "load": ("geomsafe.models", "load"),
    "audit": ("geomsafe.audit", "audit"),
    "predict": ("geomsafe.predict", "predict"),
    "finetune": ("geomsafe.train", "finetune"),
    "evaluate": ("geomsafe.evaluate", "evaluate"),
    "report": ("geomsafe.report", "report"),
    "bench": ("geomsafe.bench", "bench"),
    "toy": ("geomsafe.toy", "toy"),
    "diff": ("geomsafe.diff", "diff"),
    "FeatureAtlas": ("geomsafe.atlas", "FeatureAtlas"),
    "Example": ("geomsafe.formatting", "Example"),
    "AuditConfig": ("geomsafe.audit", "AuditConfig"),
    "PredictConfig": ("geomsafe.predict", "PredictConfig"),
    "TrainConfig": ("geomsafe.train", "TrainConfig"),
    "GuardConfig": ("geomsafe.guard", "GuardConfig"),
    "EvalConfig": ("geomsafe.evaluate", "EvalConfig"),
    "BenchConfig": ("geomsafe.bench", "BenchConfig"),
    "build_guards": ("geomsafe.guard", "build_guards"),
    "record": ("geomsafe.capture", "record"),
    "GeomsafeError": ("geomsafe.errors", "GeomsafeError"),
}
# commands whose module has the command's name: the module is made callable
_COMMAND_MODULES = {"audit", "predict", "evaluate", "report", "bench", "toy", "diff"}

__all__ = [
    "AuditConfig",
    "BenchConfig",
    "EvalConfig",
    "Example",
    "FeatureAtlas",
    "GeomsafeError",
    "GuardConfig",
    "PredictConfig",
    "TrainConfig",
    "__version__",
    "audit",
    "bench",
    "build_guards",
    "diff",
    "evaluate",
    "finetune",
    "load",
    "predict",
    "record",
    "report",
    "toy",
]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from geomsafe.atlas import FeatureAtlas
    from geomsafe.audit import AuditConfig, audit
    from geomsafe.bench import BenchConfig, bench
    from geomsafe.capture import record
    from geomsafe.diff import diff
    from geomsafe.errors import GeomsafeError
    from geomsafe.evaluate import EvalConfig, evaluate
    from geomsafe.formatting import Example
    from geomsafe.guard import GuardConfig, build_guards
    from geomsafe.models import load
    from geomsafe.predict import PredictConfig, predict
    from geomsafe.report import report
    from geomsafe.toy import toy
    from geomsafe.train import TrainConfig, finetune


class _CommandModule(types.ModuleType):
    """A module that runs its command when called: ``geomsafe.audit(...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    """``geomsafe`` itself: a command sub-module becomes callable as it is attached."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in _COMMAND_MODULES
            and isinstance(value, types.ModuleType)
            and type(value) is types.ModuleType
        ):
            value.__class__ = _CommandModule
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'geomsafe' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    if name in _COMMAND_MODULES:
        return importlib.import_module(module)  # the (callable) module, bound by the import
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


sys.modules[__name__].__class__ = _Package
