"""``experiments/gpu_scale.py --smoke``: every phase (load, audit, predict, guarded finetune,
evaluate) runs on a tiny model on the CPU and the result file records each one."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "experiments" / "gpu_scale.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_scale", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_scale"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_smoke_run_times_every_phase(tmp_path, capsys):
    out = tmp_path / "gpu_scale.json"
    payload = _script().main(["--smoke", "--device", "cpu", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["phases"] == json.loads(json.dumps(payload["phases"]))
    names = [p["name"] for p in saved["phases"]]
    assert names == ["load", "audit", "predict", "finetune", "evaluate"]
    for phase in saved["phases"]:
        assert phase["seconds"] > 0 and phase["rss_peak_gib"] > 0
        assert phase["gpu_peak_gib"] is None  # no CUDA here
    assert saved["phases"][3]["detail"]["steps"] == 2
    assert saved["device"] == "cpu" and saved["dtype"] == "float32" and saved["smoke"]
    assert all(math.isfinite(r) for r in saved["predict_risk"].values())
    printed = capsys.readouterr().out
    assert "audit" in printed and "total" in printed and str(out) in printed
