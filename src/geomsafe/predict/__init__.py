"""`predict`: pre-flight risk of a fine-tuning data set (see :mod:`geomsafe.predict.run`)."""

from geomsafe.predict.config import PredictConfig
from geomsafe.predict.result import ConceptRisk, PredictResult
from geomsafe.predict.run import predict

__all__ = [
    "ConceptRisk",
    "PredictConfig",
    "PredictResult",
    "predict",
]
