from __future__ import annotations

import json

import pytest
import torch

from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig, PilotConfig
from geomsafe.train import finetune
from geomsafe.train.pilot import pilot_directions, pilot_guard_config, split_heldout
from guard_helpers import unit
from train_helpers import REPEAT, aligned_atlas, cfg, learnable, lm_atlas

pytestmark = pytest.mark.usefixtures("one_thread")

PILOT = PilotConfig(steps=4, pcs=2, heldout=6, draws=200)
SIX = [(f"say {c}", f"{c}{c}{c} {c}{c}") for c in "defghi"]
DATA = REPEAT + SIX  # 18 examples: 12 train the pilot, 6 are held out


def test_split_heldout_is_seeded_and_disjoint():
    held, rest = split_heldout(10, 4, seed=3)
    assert len(held) == 4 and sorted(held + rest) == list(range(10))
    assert split_heldout(10, 4, seed=3) == (held, rest) != split_heldout(10, 4, seed=4)
    with pytest.raises(GeomsafeError, match="at least one must train the pilot"):
        split_heldout(4, 4, seed=0)


def test_pilot_is_deterministic_and_keeps_an_aligned_shift():
    lm = learnable()
    config = GuardConfig(concepts=["toxicity", "deception"], pilot=PILOT)
    first = pilot_directions(lm, DATA, lm_atlas(lm), config, cfg())
    assert sorted(first.shifts) == [1] and len(first.components) == 2
    assert (
        first.provenance["n_pilot_examples"] == 12 and len(first.provenance["heldout_indices"]) == 6
    )
    assert first.provenance["pilot_final_loss"] < first.provenance["pilot_first_loss"]
    shift = first.shifts[1][0]
    atlas = aligned_atlas(lm, -shift)
    second = pilot_directions(lm, DATA, atlas, config, cfg())
    torch.testing.assert_close(second.shifts[1], first.shifts[1])  # same pilot, same shifts
    top = second.components[0]
    assert top.kept and top.concept == "toxicity" and top.cosine == pytest.approx(1.0, abs=1e-4)
    assert top.cosines["deception"] == pytest.approx(0.0, abs=1e-4)
    guard_config = pilot_guard_config(config, second)
    assert guard_config.concepts == second.names and guard_config.layers is None
    assert float(second.atlas.direction("pc0_L1", 1) @ atlas.direction("toxicity", 1)) > 0.999


def test_finetune_guards_the_pilot_shifts(tmp_path):
    lm = learnable()
    probe = pilot_directions(lm, DATA, lm_atlas(lm), GuardConfig(["toxicity"], pilot=PILOT), cfg())
    atlas = aligned_atlas(lm, probe.shifts[1][0])
    res = finetune(
        lm,
        DATA,
        out=tmp_path / "run",
        guard="ablate",
        atlas=atlas,
        guard_concepts="toxicity,deception",
        guard_config=GuardConfig(source="pilot", pilot=PILOT),
        config=cfg(max_steps=2),
        progress=False,
    )
    kept = res.provenance["pilot"]["kept"]
    assert "pc0_L1" in kept and res.provenance["guard_config"]["concepts"] == kept
    assert res.provenance["guard_config"]["source"] == "pilot"
    assert res.provenance["guard_concepts"] == ["toxicity", "deception"]
    row = res.geometry_log[0]
    assert "ablate/proj/pc0_L1" in row and "proj/toxicity" in row  # the monitor: concepts
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["provenance"]["pilot"]["components"][0]["concept"] == "toxicity"
    assert (tmp_path / "run" / "pilot" / "pilot.json").is_file()
    assert (tmp_path / "run" / "pilot" / "atlas.safetensors").is_file()


def test_a_pilot_without_aligned_shifts_stops_before_training(tmp_path):
    lm = learnable()
    probe = pilot_directions(lm, DATA, lm_atlas(lm), GuardConfig(["toxicity"], pilot=PILOT), cfg())
    pcs = probe.shifts[1]  # harmful directions orthogonal to every principal shift
    atlas = lm_atlas(lm)
    for name in ("toxicity", "deception"):
        d = atlas.directions[name][1]
        d = d - pcs.T @ (pcs @ d)
        atlas.directions[name][1] = unit(d)
    with pytest.raises(GeomsafeError, match="no principal shift aligns"):
        finetune(
            lm,
            DATA,
            out=tmp_path / "run",
            guard="ablate",
            atlas=atlas,
            guard_config=GuardConfig(source="pilot", pilot=PILOT),
            config=cfg(max_steps=2),
            progress=False,
        )
    assert not (tmp_path / "run").exists()
