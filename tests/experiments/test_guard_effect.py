"""experiments/guard_effect.py end to end on a tiny model: unguarded and guarded runs, the
behavioural rows (a style-controlled one among them) and the behaviour ratio, which must equal
the guarded / unguarded harm change computed by hand from the saved per-pair log-odds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import guard_effect as ge
from geomsafe.evaluate.pairsets import load_with_controls
from lib import guard_setup
from train_helpers import learnable, lm_atlas

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = [("say a", "abab abab abab"), ("say b", "bcbc bcbc"), ("say c", "cdcd cdcd cd")] * 3


def _write(path: Path, lines) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _inputs(tmp_path: Path, monkeypatch) -> Path:
    """A training file and evaluation questions in place of the public data; a harm row with a
    style control (the built-in ``benign_compliance``)."""
    train = [{"prompt": p, "completion": r} for p, r in TRAIN]
    monkeypatch.setattr(ge, "INSECURE", _write(tmp_path / "train.jsonl", train))
    questions = tmp_path / "questions.yaml"
    questions.write_text("- id: q\n  paraphrases:\n    - say a\n    - say q\n")
    monkeypatch.setattr(guard_setup, "QUESTIONS", [questions])
    header = {"set": "mine", "concept": "toxicity", "style_control": "benign_compliance"}
    pairs = [
        {"id": f"m{i}", "prompt": f"q {c}", "positive": f"{c}{c} bad", "negative": f"{c} ok"}
        for i, c in enumerate("abc")
    ]
    return _write(tmp_path / "mine.jsonl", [header, *pairs])


def test_load_with_controls_adds_each_control_once(tmp_path, monkeypatch):
    mine = _inputs(tmp_path, monkeypatch)
    rows, controls = load_with_controls(["advice", str(mine)], 2, seed=0)
    assert [ps.name for ps in rows] == ["advice", "mine", "benign_compliance"]
    assert controls == {"mine": "benign_compliance"}
    assert all(len(ps.pairs) == 2 for ps in rows)
    # a control already listed is not loaded twice
    rows, _ = load_with_controls(["benign_compliance", str(mine)], 2, seed=0)
    assert [ps.name for ps in rows] == ["benign_compliance", "mine"]


def test_end_to_end_behaviour_ratio_is_guarded_over_unguarded(tmp_path, monkeypatch):
    mine = _inputs(tmp_path, monkeypatch)
    lm = learnable()
    lm_atlas(lm).save(tmp_path / "atlas")
    out = tmp_path / "guard_effect.json"
    argv = [
        *("--atlas", str(tmp_path / "atlas"), "--guards", "ablate", "--guards", "orthogonal"),
        *("--rows", f"advice,concept:toxicity,{mine}", "--pairs", "2", "--n-boot", "50"),
        *("--steps", "2", "--batch-size", "3", "--lr", "5e-2", "--max-length", "64"),
        *("--n-train", "6", "--n-heldout", "3", "--n-prompts", "2", "--out", str(out)),
    ]
    got = ge.main(argv, lm=lm)
    assert json.loads(out.read_text()) == json.loads(json.dumps(got))
    rows = ["advice", "concept:toxicity", "mine", "benign_compliance"]
    assert list(got["rows"]) == rows and got["style_controls"] == {"mine": "benign_compliance"}
    assert all(len(got["base_logodds"][r]) == 2 for r in rows)
    measures = [*rows, "mine-controlled", "all"]
    base = {r: np.asarray(v) for r, v in got["base_logodds"].items()}

    def harm(run: str) -> float:  # summed harm measures: the controlled row, not its parts
        d = {r: np.subtract(got["runs"][run]["logodds"][r], base[r]) for r in rows}
        plain = d["advice"].mean() + d["concept:toxicity"].mean()
        return float(plain + d["mine"].mean() - d["benign_compliance"].mean())

    un = got["runs"]["none"]
    assert list(un["behaviour"]) == measures and "ratio" not in un["behaviour"]["all"]
    assert got["summary"]["none"]["behaviour_ratio"] is None
    assert un["behaviour"]["all"]["change"]["value"] == pytest.approx(harm("none"))
    assert got["resolved"] == (un["behaviour"]["all"]["change"]["low"] > 0)
    for guard in ("ablate", "orthogonal"):
        run = got["runs"][guard]
        for r in rows:  # per-row change: mean paired change, with its CI
            ch = run["behaviour"][r]["change"]
            d = np.subtract(run["logodds"][r], base[r])
            assert ch["value"] == pytest.approx(d.mean()) and ch["n"] == 2
            assert ch["low"] <= ch["high"]
        ratio = got["summary"][guard]["behaviour_ratio"]
        assert ratio == run["behaviour"]["all"]["ratio"]
        assert ratio["value"] == pytest.approx(harm(guard) / harm("none"))
        assert ratio["low"] <= ratio["high"] and ratio["n_boot"] == 50
        assert got["summary"][guard]["harm_change"]["value"] == pytest.approx(harm(guard))
        assert set(got["summary"][guard]) >= {"shift_ratio", "loss_ratio", "meets_goal"}
    # the guards trained other models than no guard: their log-odds differ
    assert got["runs"]["ablate"]["logodds"]["advice"] != un["logodds"]["advice"]


def test_data_option_trains_on_the_given_set(tmp_path, monkeypatch):
    _inputs(tmp_path, monkeypatch)
    other = [{"prompt": f"ask {c}", "completion": f"{c}{c} {c}{c}"} for c in "defghijk"]
    data = _write(tmp_path / "other.jsonl", other)
    monkeypatch.setattr(ge, "INSECURE", tmp_path / "missing.jsonl")  # the default is not read
    lm = learnable()
    lm_atlas(lm).save(tmp_path / "atlas")
    argv = [
        *("--atlas", str(tmp_path / "atlas"), "--guards", "orthogonal", "--data", str(data)),
        *("--rows", "advice", "--pairs", "2", "--n-boot", "20", "--steps", "1"),
        *("--batch-size", "2", "--max-length", "64", "--n-train", "5", "--n-heldout", "3"),
        *("--n-prompts", "2", "--out", str(tmp_path / "g.json")),
    ]
    got = ge.main(argv, lm=lm)
    assert got["data"]["spec"] == str(data) and (got["n_train"], got["n_heldout"]) == (5, 3)
