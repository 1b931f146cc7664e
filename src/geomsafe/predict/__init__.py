"""`predict`: pre-flight risk of a fine-tuning data set (see :mod:`geomsafe.predict.run`)."""

from geomsafe.predict.config import METHODS, PER_EXAMPLE_SCORES, PredictConfig
from geomsafe.predict.estimators import ESTIMATORS, Estimate, Estimator, Inputs
from geomsafe.predict.examples import attack_lines, riskiest_lines
from geomsafe.predict.gradient import probe_prompts
from geomsafe.predict.output import write_predict
from geomsafe.predict.pairs import concept_pairs_for_direction
from geomsafe.predict.result import NO_CONCEPT, ConceptRisk, PredictResult
from geomsafe.predict.run import harmful_atlas, predict

__all__ = [
    "ESTIMATORS",
    "METHODS",
    "NO_CONCEPT",
    "PER_EXAMPLE_SCORES",
    "ConceptRisk",
    "Estimate",
    "Estimator",
    "Inputs",
    "PredictConfig",
    "PredictResult",
    "attack_lines",
    "concept_pairs_for_direction",
    "harmful_atlas",
    "predict",
    "probe_prompts",
    "riskiest_lines",
    "write_predict",
]
