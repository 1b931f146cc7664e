"""Geometry of a FeatureAtlas: overlap scores with a permutation null and bootstrap CI,
superposition density per layer, and attention-head attribution."""

from geomsafe.geometry.density import DensityResult, effective_rank, superposition_density
from geomsafe.geometry.heads import HeadAttribution, head_attribution
from geomsafe.geometry.overlap import (
    OverlapResult,
    cosine_matrix,
    overlap,
    overlap_per_layer,
    overlap_score,
)

__all__ = [
    "DensityResult",
    "HeadAttribution",
    "OverlapResult",
    "cosine_matrix",
    "effective_rank",
    "head_attribution",
    "overlap",
    "overlap_per_layer",
    "overlap_score",
    "superposition_density",
]
