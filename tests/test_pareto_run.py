"""The guard Pareto runner end to end on a tiny model: every guard, one strength, two data
sets; cells resume; the summary and the markdown come out."""

from __future__ import annotations

import json

import pytest

from geomsafe.datasets import Dataset
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.logodds import PairSet, ResponsePair
from geomsafe.guard import GuardConfig
from geomsafe.pareto import PARETO_JSON, PARETO_MD, ParetoConfig, TrainSet, run_grid
from geomsafe.train.data import build
from train_helpers import learnable, lm_atlas

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
