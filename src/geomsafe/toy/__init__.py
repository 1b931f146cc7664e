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

from geomsafe.toy.entangle import EntangleConfig, ToyOrthogonalGuard, run_entanglement
from geomsafe.toy.model import ToyConfig, ToyModel
from geomsafe.toy.run import ToyResult, toy
from geomsafe.toy.sweep import PhaseConfig, SweepConfig, run_phase_diagram, run_sweep
from geomsafe.toy.train import ToyTrainConfig, train

__all__ = [
    "EntangleConfig",
    "PhaseConfig",
    "SweepConfig",
    "ToyConfig",
    "ToyModel",
    "ToyOrthogonalGuard",
    "ToyResult",
    "ToyTrainConfig",
    "run_entanglement",
    "run_phase_diagram",
    "run_sweep",
    "toy",
    "train",
]
