"""The guard Pareto runner end to end on a tiny model: every guard, one strength, two data
sets; cells resume; the summary and the markdown come out."""

from __future__ import annotations

import json

import pytest

from geomsafe.datasets import Dataset
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.logodds import PairSet, ResponsePair
from geomsafe.guard import GuardConfig, PilotConfig
from geomsafe.train.data import build
from geomsafe.train.pilot import pilot_directions
from guard_helpers import unit
from lib.pareto import PARETO_JSON, PARETO_MD, ParetoConfig, TrainSet, run_grid
from train_helpers import aligned_atlas, learnable, lm_atlas

pytestmark = pytest.mark.usefixtures("one_thread")

HARM = [("say a", "abab abab abab"), ("say b", "bcbc bcbc"), ("say c", "cdcd cdcd cd")] * 3
BENIGN = [("say x", "xyxy xyxy"), ("say y", "yzyz yz"), ("say z", "zaza zaza za")] * 3


def _set(name: str, examples, harmful: bool, lm) -> TrainSet:
    data = Dataset.from_examples(examples[:6], source=name)
    held = build(lm.tokenizer, Dataset.from_examples(examples[6:], source=name), max_length=64)
    return TrainSet(name, data, held, harmful)


def _rows() -> list[PairSet]:
    pairs = tuple(
        ResponsePair(f"r{i}", f"q {c}", f"{c}{c} bad {i}", f"{c} good {i}")
        for i, c in enumerate("abcdef")
    )
    return [PairSet("advice", "dangerous_advice", pairs), PairSet("other", "toxicity", pairs[:3])]


def test_grid_end_to_end_resume_and_refusal(tmp_path):
    lm = learnable()
    atlas = lm_atlas(lm)
    sets = [_set("harm", HARM, True, lm), _set("task:b", BENIGN, False, lm)]
    cfg = ParetoConfig(
        steps=2, batch_size=3, learning_rate=1e-2, max_length=64, time_steps=2, n_boot=50
    )
    guards = ["ablate", "projection"]
    kw = dict(
        guards=guards,
        strengths=["mid"],
        config=cfg,
        guard_config=GuardConfig(concepts=["toxicity", "deception"]),
        log=lambda _: None,
    )
    out = tmp_path / "pareto"
    prompts = ["say a", "say q"]
    summary = run_grid(lm, atlas, sets, _rows(), prompts, out, **kw)
    files = sorted(p.name for p in (out / "cells").iterdir())
    assert len(files) == 2 * (1 + len(guards))
    assert (out / PARETO_MD).read_text().count("\n| harm |") == len(guards)
    on_disk = json.loads((out / PARETO_JSON).read_text())
    assert on_disk["format"] == "geomsafe.pareto/1"
    assert len(summary["cells"]) == 2 * len(guards)
    assert {s["key"] for s in summary["settings"]} == {f"{g}@mid" for g in guards}
    for row in summary["cells"]:
        assert row["time_ratio"] > 0 and row["loss_ratio"] > 0
        assert set(row["harm"]) == {"advice", "other", "all", "rule", "rule:sum", "rule:worst"}
    # the ablate guard trains a different model than no guard: its log-odds differ
    cell = json.loads((out / "cells" / "harm--ablate--mid.json").read_text())
    none = json.loads((out / "cells" / "harm--none---.json").read_text())
    assert cell["logodds"]["advice"] != none["logodds"]["advice"]
    assert cell["guard_config"]["concepts"] == ["toxicity", "deception"]
    # resume: nothing is retrained (a cell file's time stamp would change), same summary
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    seen: list[str] = []
    again = run_grid(lm, atlas, sets, _rows(), prompts, out, **{**kw, "log": seen.append})
    assert seen and all("skipped" in line for line in seen)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps
    assert again["cells"] == summary["cells"]
    # a missing cell is run again, and only it
    (out / "cells" / "harm--ablate--mid.json").unlink()
    seen.clear()
    run_grid(lm, atlas, sets, _rows(), prompts, out, **{**kw, "log": seen.append})
    assert [line.split(":")[0] for line in seen if "done (" in line] == ["harm|ablate@mid"]
    # other settings into the same folder are refused, in one line
    with pytest.raises(GeomsafeError, match="other settings"):
        run_grid(lm, atlas, sets, _rows(), ["say a", "say b"], out, **kw)
    # a style control changes the harm measures: it is part of the settings, so refused too
    with pytest.raises(GeomsafeError, match="other settings"):
        run_grid(lm, atlas, sets, _rows(), prompts, out, **kw, controls={"advice": "other"})
    with pytest.raises(GeomsafeError, match="missing: advice -> absent"):
        run_grid(lm, atlas, sets, _rows(), prompts, out, **kw, controls={"advice": "absent"})
    # a partial grid: run_missing=False runs nothing and summarises the finished cells only
    seen.clear()
    part = run_grid(
        lm,
        atlas,
        sets,
        _rows(),
        prompts,
        out,
        **{**kw, "guards": [*guards, "steer"], "log": seen.append, "run_missing": False},
    )
    assert sum("not run" in line for line in seen) == 2  # steer@mid on both data sets
    assert {s["key"] for s in part["settings"]} == {f"{g}@mid" for g in guards}
    assert not (out / "cells" / "harm--steer--mid.json").exists()
    with pytest.raises(GeomsafeError, match="nothing has run"):
        run_grid(lm, atlas, sets, _rows(), prompts, tmp_path / "empty", **kw, run_missing=False)


def test_an_ablate_pilot_cell_guards_the_pilot_shifts(tmp_path):
    """``ablate@pilot``: the cell runs the pilot on its own training part, ablates the kept
    shift (not the concept directions), measures on the concepts, and records the pilot and its
    one-off cost; a pilot that keeps nothing stops the grid with a one-line error."""
    lm = learnable()
    harm = _set("harm", HARM, True, lm)
    cfg = ParetoConfig(
        steps=2, batch_size=3, learning_rate=1e-2, max_length=64, time_steps=2, n_boot=50
    )
    pilot = PilotConfig(steps=3, pcs=2, heldout=4, draws=100)
    base = GuardConfig(concepts=["toxicity", "deception"], pilot=pilot)
    features = build(lm.tokenizer, harm.train, max_length=64, truncate=True)
    probe = pilot_directions(lm, features, lm_atlas(lm), base, cfg.train_config())
    atlas = aligned_atlas(lm, probe.shifts[1][0])  # toxicity along the pilot's top shift
    kw = dict(guards=["ablate"], strengths=["pilot"], config=cfg, guard_config=base)
    kw["log"] = lambda _: None
    run_grid(lm, atlas, [harm], _rows(), ["say a", "say q"], tmp_path / "p", **kw)
    cell = json.loads((tmp_path / "p" / "cells" / "harm--ablate--pilot.json").read_text())
    none = json.loads((tmp_path / "p" / "cells" / "harm--none---.json").read_text())
    assert "pc0_L1" in cell["pilot"]["kept"]
    assert cell["pilot"]["components"][0]["concept"] == "toxicity"
    assert cell["guard_config"]["source"] == "pilot"
    assert cell["guard_config"]["concepts"] == cell["pilot"]["kept"]
    assert sorted(cell["projection"]) == ["deception", "toxicity"]  # measured on the concepts
    assert cell["time"]["pilot_s"] > 0 and cell["time"]["pilot_share"] > 0
    assert cell["logodds"]["advice"] != none["logodds"]["advice"]
    # no shift aligned with a concept: the grid stops before the cell, in one line
    pcs = probe.shifts[1]
    atlas = lm_atlas(lm)
    for name in ("toxicity", "deception"):
        d = atlas.directions[name][1]
        atlas.directions[name][1] = unit(d - pcs.T @ (pcs @ d))
    with pytest.raises(GeomsafeError, match="no principal shift aligns"):
        run_grid(lm, atlas, [harm], _rows(), ["say a", "say q"], tmp_path / "q", **kw)
    assert not (tmp_path / "q" / "cells" / "harm--ablate--pilot.json").exists()
