"""experiments/behaviour_runs.py: a tiny end-to-end run (resumable, one cached base evaluation)."""

from __future__ import annotations

import json

import pytest

import behaviour_runs as br
from geomsafe.testing import tiny_model
from lib.behaviour import BASE_DIR


def test_end_to_end_on_a_tiny_model_resumable(tmp_path):
    lm = tiny_model("llama", seed=0)
    argv = [
        "--datasets",
        "task:code,mix:task:code:task:summarisation:0.5",
        "--rows",
        "advice,concept:dangerous_advice",
        "--pairs",
        "6",
        "--steps",
        "2",
        "--lr",
        "5e-2",
        "--train-examples",
        "8",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    s = br.main(argv, lm=lm)
    assert s["datasets"] == ["task:code", "mix:task:code:task:summarisation:0.5"]
    assert s["rows"] == ["logodds:advice", "logodds:concept:dangerous_advice"]
    one = json.loads((tmp_path / "task_code" / "behaviour.json").read_text())
    row = one["rows"]["logodds:concept:dangerous_advice"]
    assert row["n_paired"] == 6 and row["concept"] == "dangerous_advice"
    assert row["ci_low"] <= row["change"] <= row["ci_high"] and row["change"] != 0
    assert row["change"] == pytest.approx(row["after"] - row["before"], abs=1e-9)
    assert (tmp_path / "task_code" / "adapter" / "adapter_config.json").is_file()
    assert len(list((tmp_path / BASE_DIR).iterdir())) == 1  # one cached base evaluation
    assert "task:code" in (tmp_path / "summary.md").read_text()
    # resumable: without --rows a finished data set is skipped (nothing is rewritten) ...
    path = tmp_path / "task_code" / "behaviour.json"
    stamp = path.stat().st_mtime_ns
    weights = tmp_path / "task_code" / "adapter" / "adapter_model.safetensors"
    adapter = weights.read_bytes()
    rows_at = argv.index("--rows")
    br.main(argv[:rows_at] + argv[rows_at + 2 :], lm=lm)
    assert path.stat().st_mtime_ns == stamp
    # ... and --rows adds rows to it on the existing adapter, without training again
    argv[rows_at + 1] = "concept:toxicity"
    br.main(argv, lm=lm)
    again = json.loads(path.read_text())
    assert set(again["rows"]) == set(one["rows"]) | {"logodds:concept:toxicity"}
    assert again["rows"]["logodds:advice"] == one["rows"]["logodds:advice"]
    assert weights.read_bytes() == adapter
