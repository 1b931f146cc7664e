"""experiments/predict_scale.py: one timed predict per size on a tiny saved model, and the
linear fit of time against size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import predict_scale as ps
from geomsafe.concepts import ConceptSet, Pair
from geomsafe.directions import extract
from geomsafe.models import load
from geomsafe.testing import save_tiny
from predict_helpers import write_data


def test_linear_fit_recovers_a_line():
    fit = ps.linear_fit([1000, 2000, 4000], [12.0, 22.0, 42.0])
    assert fit["s_per_1000"] == pytest.approx(10.0) and fit["intercept_s"] == pytest.approx(2.0)
    assert fit["r2"] == pytest.approx(1.0)
    assert ps.linear_fit([1, 2, 3], [1.0, 3.0, 2.0])["r2"] < 0.9


def _setup(tmp_path: Path) -> list[str]:
    """A tiny saved model, its one-concept atlas and 12 examples: the common arguments."""
    model = save_tiny(tmp_path / "model")
    rude = ConceptSet(
        "rude", "harmful", [Pair(f"q{i}", "you idiot " * (1 + i % 3), "thanks") for i in range(8)]
    )
    extract(load(str(model)), [rude], progress=False).atlas.save(tmp_path / "atlas")
    data = write_data(tmp_path, "d", "fine words ", n=12)
    return [
        *("--model", str(model), "--data", str(data), "--atlas", str(tmp_path / "atlas")),
        *("--threads", "1", "--out", str(tmp_path / "scale")),
    ]


def test_one_predict_per_size(tmp_path):
    out = tmp_path / "scale"
    got = ps.main([*_setup(tmp_path), "--sizes", "4,8,12"])
    assert [got["runs"][n]["n_examples"] for n in ("4", "8", "12")] == [4, 8, 12]
    assert all(
        got["runs"][n]["rc"] == 0 and "--no-generate" in got["runs"][n]["command"]
        for n in ("4", "8", "12")
    )
    assert json.loads((out / "predict_scale.json").read_text())["fit"] == got["fit"]
    assert (
        set(got["s_per_1000"]) == {"4", "8", "12"}
        and "fit:" in (out / "predict_scale.md").read_text()
    )
    with pytest.raises(SystemExit, match="two positive sizes"):
        ps.main(["--sizes", "5"])


def test_resume_keeps_measured_sizes_and_refits(tmp_path, monkeypatch):
    base = _setup(tmp_path)
    first = ps.main([*base, "--sizes", "4,8"])
    calls = []
    real = ps.timed
    monkeypatch.setattr(ps, "timed", lambda argv, log: calls.append(argv) or real(argv, log))
    got = ps.main([*base, "--sizes", "4,8,12", "--resume"])
    assert len(calls) == 1 and "12" in calls[0]  # only the new size ran
    assert got["runs"]["4"] == first["runs"]["4"] and got["runs"]["8"] == first["runs"]["8"]
    assert got["runs"]["12"]["n_examples"] == 12 and set(got["s_per_1000"]) == {"4", "8", "12"}
    # another generation setting, atlas or data is not the same series: nothing is kept
    record, atlas = tmp_path / "scale" / "predict_scale.json", base[base.index("--atlas") + 1]
    setting = {k: got[k] for k in ("model", "data", "atlas", "generate")}
    assert set(ps._earlier_runs(record, setting, [4, 8, 12])) == {"4", "8", "12"}
    assert ps._earlier_runs(record, {**setting, "generate": True}, [4, 8]) == {}
    assert ps._earlier_runs(record, {**setting, "data": "other.jsonl"}, [4, 8]) == {}
    assert ps._earlier_runs(record, {**setting, "atlas": atlas + "2"}, [4, 8]) == {}
