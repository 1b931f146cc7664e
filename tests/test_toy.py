"""Toy models of superposition: the known results, the entanglement experiment, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from geomsafe.cli import main
from geomsafe.errors import GeomsafeError
from geomsafe.toy import (
    EntangleConfig,
    SweepConfig,
    ToyConfig,
    ToyModel,
    ToyOrthogonalGuard,
    ToyTrainConfig,
    run_entanglement,
    run_sweep,
    toy,
    train,
)
from geomsafe.toy.metrics import cosines, dimensionality, dims_per_feature
from geomsafe.toy.run import FIGURES, JSON_NAME
from geomsafe.toy.sweep import classify_phase
from geomsafe.toy.train import importance_vector, sample_features

# --- metrics on hand-made geometries ---------------------------------------------------------


def _polygon(k: int) -> torch.Tensor:
    angles = torch.arange(k) * 2 * math.pi / k
    return torch.stack([torch.cos(angles), torch.sin(angles)]).unsqueeze(0)  # [1, 2, k]


def test_dimensionality_of_known_geometries():
    eye = torch.eye(3).unsqueeze(0)
    assert torch.allclose(dimensionality(eye), torch.ones(1, 3), atol=1e-5)
    antipodal = torch.tensor([[[1.0, -1.0]]])  # two features on one line
    assert torch.allclose(dimensionality(antipodal), torch.full((1, 2), 0.5), atol=1e-5)
    pentagon = _polygon(5)
    assert torch.allclose(dimensionality(pentagon), torch.full((1, 5), 0.4), atol=1e-5)
    assert torch.allclose(dims_per_feature(pentagon), torch.tensor([0.4]))
    dead = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # second feature not represented
    assert dimensionality(dead)[0, 1] == 0.0
    assert torch.allclose(cosines(pentagon)[0, 0, 1], torch.tensor(math.cos(2 * math.pi / 5)))


def test_phase_codes():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    assert classify_phase(w).tolist() == [0, 1, 2]


def test_sampling_sparsity_and_range():
    p = torch.tensor([[0.1, 0.5, 1.0]])
    x = sample_features(20000, p, torch.Generator().manual_seed(0))
    assert x.shape == (1, 20000, 3) and x.min() >= 0 and x.max() < 1
    density = (x > 0).float().mean(1)[0]
    assert torch.allclose(density, p[0], atol=0.02)
    active = x[0, :, 1][x[0, :, 1] > 0]
    assert abs(float(active.mean()) - 0.5) < 0.02  # uniform on [0, 1] where active


# --- the known results -------------------------------------------------------------------------


def test_dense_features_keep_only_the_m_most_important():
    """S = 0, n=6 > m=3, importance 0.6^i: the (lowest-loss of 3 inits) model gives the 3 most
    important features orthogonal unit directions and drops the rest."""
    result = run_sweep(SweepConfig(6, 3, (0.0, 0.0, 0.0), 0.6, 1000, 512, 1e-2, seed=0))
    best = int(result.loss.argmin())
    norms = result.norms[best]
    assert (norms > 0.5).tolist() == [True, True, True, False, False, False]
    assert torch.allclose(norms[:3], torch.ones(3), atol=0.05)
    assert norms[3:].max() < 0.2
    off = cosines(result.W)[best, :3, :3] - torch.eye(3)
    assert off.abs().max() < 0.05
    assert torch.allclose(result.dimensionality[best, :3], torch.ones(3), atol=0.02)


def test_sparse_features_go_into_superposition():
    """S = 0.97, n=5 > m=2: more than m features are stored, each with dimensionality < 1."""
    result = run_sweep(SweepConfig(5, 2, (0.97, 0.0), 0.9, 800, 512, 1e-2, seed=0))
    sparse, dense = 0, 1
    kept = result.norms[sparse] > 0.5
    assert int(kept.sum()) > 2
    assert int((result.norms[dense] > 0.5).sum()) <= 2 + 1  # the dense twin does not
    dims = result.dimensionality[sparse]
    assert float(dims[kept].mean()) < 0.75
    assert float(dims.sum()) <= 2.0 + 0.05  # the m dimensions are shared, not exceeded
    assert float(result.dims_per_feature[sparse]) < 0.75


def test_training_is_seeded():
    def once() -> torch.Tensor:
        model = ToyModel(ToyConfig(6, 2, 2), torch.Generator().manual_seed(3))
        train(model, importance_vector(6), torch.tensor([[0.1]]), ToyTrainConfig(50, 64, seed=3))
        return model.W.detach()

    assert torch.equal(once(), once())


# --- entanglement and the guard -----------------------------------------------------------------

SMALL = EntangleConfig(
    n_features=12,
    n_hidden=4,
    sparsity=0.9,
    n_bases=1,
    base_steps=800,
    base_lr=5e-3,
    finetune_steps=250,
    batch_size=256,
    seed=0,
)


@pytest.fixture(scope="module")
def entangled():
    return run_entanglement(SMALL)


def test_collateral_grows_with_cosine(entangled):
    s = entangled.summary()
    assert s["n_pairs"] > 50
    assert s["free_pearson_probe"] > 0.3
    assert s["free_spearman_probe"] > 0.3
    assert s["free_spearman_output"] > 0.0
    assert s["free_probe_collateral_protected"] > 0.02


def test_guard_removes_collateral_on_protected_features(entangled):
    s = entangled.summary()
    assert abs(s["guarded_probe_collateral_protected"]) < 1e-4
    assert abs(s["guarded_output_collateral_protected"]) < 1e-4
    assert s["free_target_gain"] > 0.1
    assert s["guarded_target_gain"] > 0.5 * s["free_target_gain"]


def test_entanglement_is_deterministic(entangled):
    again = run_entanglement(SMALL)
    assert again.summary() == entangled.summary()
    assert again.free.probe_collateral == entangled.free.probe_collateral


def test_guard_projection_is_exact():
    gen = torch.Generator().manual_seed(0)
    W0 = torch.randn(2, 4, 7, generator=gen)
    protected = torch.tensor([[1, 2], [0, 6]])
    guard = ToyOrthogonalGuard(W0, protected)
    model = ToyModel.from_weights(W0 + torch.randn(2, 4, 7, generator=gen), torch.zeros(2, 7))
    with torch.no_grad():
        guard(model)
    delta = model.W.detach() - W0
    for i in range(2):
        dirs = W0[i][:, protected[i]]
        assert (dirs.T @ delta[i]).abs().max() < 1e-4


def test_config_validation():
    with pytest.raises(GeomsafeError, match="n_hidden < n_features"):
        EntangleConfig(n_features=4, n_hidden=4)
    with pytest.raises(GeomsafeError, match="protect"):
        EntangleConfig(n_hidden=3, protect=3)


def test_api_rejects_bad_output(tmp_path: Path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(GeomsafeError, match="not a folder"):
        toy(target, quick=True)
    with pytest.raises(GeomsafeError, match="seed"):
        toy(tmp_path, seed=-1, quick=True)


# --- the CLI ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("toy") / "out"
    result = CliRunner().invoke(main, ["toy", "--out", str(out), "--quick", "--seed", "1"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_cli_writes_json_and_figures(cli_run):
    out, output = cli_run
    assert "collateral vs cosine: Pearson" in output
    for name in FIGURES:
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert "<svg" in svg.read_text()[:2000], name
    data = json.loads((out / JSON_NAME).read_text())
    assert data["seed"] == 1 and data["quick"] is True
    summary = data["entanglement"]["summary"]
    assert summary["free_pearson_probe"] > 0
    assert abs(summary["guarded_probe_collateral_protected"]) < 1e-4
    assert data["polygons"]["n_represented"][0] <= 3 < data["polygons"]["n_represented"][3]
    assert set(data["timing_s"]) >= {"total_s", "guard_overhead_ratio"}
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_same_seed_same_numbers(cli_run, tmp_path: Path):
    out, _ = cli_run
    written = json.loads((out / JSON_NAME).read_text())
    written.pop("timing_s")
    again = toy(tmp_path, seed=1, quick=True)
    assert again.numbers() == written


def test_cli_bad_output_is_one_line(tmp_path: Path):
    target = tmp_path / "a_file"
    target.write_text("x")
    result = CliRunner().invoke(main, ["toy", "--out", str(target), "--quick"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "not a folder" in result.output
    result = CliRunner().invoke(main, ["toy", "--out", str(tmp_path), "--seed", "-3"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
