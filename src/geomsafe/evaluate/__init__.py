"""Behavioural evaluation of a model before and after fine-tuning (the command is
:func:`geomsafe.evaluate.run.evaluate`; what is measured: :mod:`geomsafe.evaluate.measure`)."""

from geomsafe.evaluate.config import EvalConfig
from geomsafe.evaluate.result import Change, EvalResult, Metric, ModelEval, load_eval
from geomsafe.evaluate.run import evaluate

__all__ = [
    "Change",
    "EvalConfig",
    "EvalResult",
    "Metric",
    "ModelEval",
    "evaluate",
    "load_eval",
]
