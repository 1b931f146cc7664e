"""Toy models of superposition (Elhage et al., 2022) and the entanglement experiment.

``toy(out_dir, seed=0, quick=False)`` runs everything and writes ``toy.json`` plus the figures;
the pieces are importable on their own:

* ``ToyModel`` / ``ToyConfig``: ``x' = ReLU(WᵀW x + b)``, many instances trained at once;
* ``train`` / ``ToyTrainConfig`` / ``sample_features``: sparse synthetic data and Adam training;
* ``dimensionality`` and friends: superposition statistics of ``W``;
* ``run_sweep`` / ``run_phase_diagram``: the polygons, the sparsity sweep, the phase diagram;
* ``run_entanglement`` / ``EntangleConfig`` / ``ToyOrthogonalGuard``: boosting one feature, the
  collateral on the others, and the toy ``orthogonal`` guard.
"""

from __future__ import annotations

from geomsafe.toy.entangle import (
    EntangleConfig,
    EntangleResult,
    ToyOrthogonalGuard,
    run_entanglement,
)
from geomsafe.toy.metrics import (
    cosines,
    dimensionality,
    dims_per_feature,
    gram,
    interference,
    n_represented,
    norms,
)
from geomsafe.toy.model import ToyConfig, ToyModel
from geomsafe.toy.run import ToyResult, toy
from geomsafe.toy.sweep import (
    PhaseConfig,
    PhaseResult,
    SweepConfig,
    SweepResult,
    classify_phase,
    run_phase_diagram,
    run_sweep,
)
from geomsafe.toy.train import (
    ToyTrainConfig,
    importance_vector,
    reconstruction_loss,
    sample_features,
    train,
)

__all__ = [
    "EntangleConfig",
    "EntangleResult",
    "PhaseConfig",
    "PhaseResult",
    "SweepConfig",
    "SweepResult",
    "ToyConfig",
    "ToyModel",
    "ToyOrthogonalGuard",
    "ToyResult",
    "ToyTrainConfig",
    "classify_phase",
    "cosines",
    "dimensionality",
    "dims_per_feature",
    "reconstruction_loss",
    "gram",
    "importance_vector",
    "interference",
    "n_represented",
    "norms",
    "run_entanglement",
    "run_phase_diagram",
    "run_sweep",
    "sample_features",
    "toy",
    "train",
]
