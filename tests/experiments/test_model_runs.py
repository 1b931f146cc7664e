"""experiments/model_runs.py: each step a timed ``geomsafe`` subprocess; a failed step is
recorded with its one-line error and stops the run; re-runs merge into the same table."""

from __future__ import annotations

import json

import model_runs as mr
from geomsafe.testing import save_tiny


def test_steps_are_timed_and_a_failure_stops_the_run(tmp_path):
    model = save_tiny(tmp_path / "model")
    out = tmp_path / "runs"
    got = mr.main(["--model", str(model), "--out", str(out), "--only", "info"])
    info = got["steps"]["info"]
    assert info["rc"] == 0 and info["wall_s"] > 0 and 0 < info["peak_rss_gb"] < 8
    assert info["command"] == f"geomsafe info --model {model}"
    # a model that does not exist: the audit fails in one line and predict never runs
    missing = tmp_path / "nothing"
    got = mr.main(["--model", str(missing), "--out", str(out), "--only", "audit,predict"])
    audit = got["steps"]["audit"]
    assert audit["rc"] != 0 and "error: model not found" in audit["last"]
    assert "predict" not in got["steps"] and "info" in got["steps"]  # merged with the first run
    saved = json.loads((out / "model_runs.json").read_text())
    assert saved["steps"] == got["steps"]
    text = (out / "model_runs.md").read_text()
    assert "| info | 0 |" in text and "| audit |" in text


def test_commands_pass_the_options_through(tmp_path):
    args = mr.parse_args(["--model", "m", "--layers", "2:5", "--steps", "7", "--pairs", "9"])
    cmds = mr.commands(args, tmp_path)
    assert cmds["audit"][cmds["audit"].index("--layers") + 1] == "2:5"
    assert cmds["finetune"][cmds["finetune"].index("--max-steps") + 1] == "7"
    assert cmds["evaluate"][cmds["evaluate"].index("--logodds-pairs") + 1] == "9"
    assert cmds["predict"][cmds["predict"].index("--atlas") + 1] == str(tmp_path / "audit")
