"""Held-out split of concept pairs (geomsafe.concepts.split) and where it is used."""

from __future__ import annotations

import json
import random

import pytest

from geomsafe import directions
from geomsafe.audit import AuditConfig
from geomsafe.audit.run import _concept_sets
from geomsafe.concepts import (
    ConceptSet,
    Pair,
    builtin_names,
    load_builtin,
    load_for_direction,
    load_for_evaluation,
    split_record,
)
from geomsafe.concepts.split import prompt_sha1, used_prompts
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate import EvalConfig, evaluate
from geomsafe.evaluate.logodds import refuse_overlap
from geomsafe.evaluate.pairsets import CONCEPT_SETS, DEFAULT_SETS, load_pair_set
from geomsafe.guard.resolve import extract_atlas
from geomsafe.predict.run import harmful_atlas
from geomsafe.testing import tiny_model


def _prompts(cs: ConceptSet) -> set[str]:
    return {p.prompt for p in cs.pairs}


@pytest.mark.parametrize("name", builtin_names())
def test_halves_are_disjoint_cover_all_pairs_and_about_half(name):
    full = load_builtin(name)
    d, e = full.split(0)
    assert not _prompts(d) & _prompts(e)
    assert sorted(map(repr, d.pairs + e.pairs)) == sorted(map(repr, full.pairs))
    assert 0.35 < len(d.pairs) / len(full.pairs) < 0.65
    assert d.meta == {"split": "direction", "split_seed": "0"} and e.meta["split"] == "evaluation"
    assert (d.name, d.kind, e.name, e.kind) == (full.name, full.kind, full.name, full.kind)


def test_split_is_seeded_and_stable_under_reordering():
    full = load_builtin("deception")
    d0, _ = full.split(0)
    assert full.split(0)[0].pairs == d0.pairs
    assert _prompts(full.split(1)[0]) != _prompts(d0)
    shuffled = list(full.pairs)
    random.Random(3).shuffle(shuffled)
    again = ConceptSet(full.name, full.kind, shuffled).split(0)[0]
    assert _prompts(again) == _prompts(d0)


def test_a_prompt_shared_by_concepts_is_in_the_same_half_of_each():
    halves = {n: load_builtin(n).split() for n in builtin_names()}
    direction = set().union(*(_prompts(d) for d, _ in halves.values()))
    evaluation = set().union(*(_prompts(e) for _, e in halves.values()))
    assert not direction & evaluation


def test_too_few_prompts_to_split_is_one_line_error():
    one = ConceptSet("c", "harmful", [Pair("same prompt", f"a{i}", f"b{i}") for i in range(4)])
    with pytest.raises(GeomsafeError, match="half under split seed 0 is empty"):
        one.split(0)


def test_builtins_load_for_direction_split_user_files_only_when_asked(tmp_path):
    d, e = load_builtin("toxicity").split()
    assert load_for_direction("toxicity").pairs == d.pairs
    assert load_for_evaluation("toxicity").pairs == e.pairs
    assert load_for_direction("toxicity", split=False).pairs == load_builtin("toxicity").pairs
    rows = [{"prompt": f"q{i}", "positive": f"bad {i}", "negative": f"good {i}"} for i in range(20)]
    f = tmp_path / "mine.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    assert len(load_for_direction(str(f)).pairs) == 20
    mine_d = load_for_direction(str(f), split=True)
    assert 0 < len(mine_d.pairs) < 20
    held = load_pair_set(f"concept-eval:{f}")
    assert {p.prompt for p in held.pairs} == _prompts(load_for_evaluation(str(f)))
    assert not {p.prompt for p in held.pairs} & _prompts(mine_d)
    assert len(load_pair_set(f"concept:{f}").pairs) == 20  # a user file: all its pairs


def test_audit_and_guard_extraction_use_the_direction_half():
    sets, _, _ = _concept_sets(
        AuditConfig(concepts=("dangerous_advice", "helpfulness"), control=False)
    )
    for cs in sets:
        assert cs.meta["split"] == "direction"
        assert set(cs.pairs) <= set(load_for_direction(cs.name).pairs)


def test_atlas_records_the_split_and_the_prompts_used():
    lm = tiny_model("llama", seed=0)
    atlas = extract_atlas(lm, ["deception"], [], max_pairs=8, seed=0, progress=False)
    rec = atlas.stats["deception"]["split"]
    used = load_for_direction("deception").subset(8, 0)
    assert rec["split"] == "direction" and rec["split_seed"] == 0
    assert rec["prompts_sha1"] == sorted(prompt_sha1(p.prompt) for p in used.pairs)
    assert used_prompts(atlas.stats) == {"deception": set(rec["prompts_sha1"])}
    held = load_pair_set("concept:deception")
    refuse_overlap([held], atlas.stats)  # the evaluation half never overlaps
    # predict's own atlas (no --atlas) is extracted from the direction halves too
    own = harmful_atlas(lm, max_pairs=4, seed=0, progress=False)
    assert all(own.stats[n]["split"]["split"] == "direction" for n in own.harmful)
    refuse_overlap([load_pair_set(f"concept:{n}") for n in own.harmful], own.stats)
    ex = directions.extract(lm, [load_builtin("deception").subset(8, 0)], progress=False)
    assert ex.atlas.stats["deception"]["split"]["split"] == "none"


def test_evaluate_refuses_pairs_the_atlas_used_in_one_line():
    lm = tiny_model("llama", seed=0)
    unsplit = load_builtin("deception")
    ex = directions.extract(lm, [unsplit], progress=False)  # every pair, evaluation half too
    opts = dict(n_prompts=0, n_xstest=0, n_probe=0, em_probes=False, logodds_pairs=4)
    with pytest.raises(GeomsafeError) as err:
        evaluate(lm, atlas=ex.atlas, logodds=("concept:deception",), progress=False, **opts)
    msg = str(err.value)
    assert "\n" not in msg and "share prompts" in msg and "deception" in msg
    legacy = {"deception": {"data_hash": unsplit.data_hash()}}  # made before the split
    with pytest.raises(GeomsafeError, match="does not record which pairs"):
        refuse_overlap([load_pair_set("concept:deception")], legacy)
    refuse_overlap([load_pair_set("advice")], legacy)  # other sets pass
    res = evaluate(lm, logodds=("concept:deception",), progress=False, config=EvalConfig(), **opts)
    assert "logodds:concept:deception" in res.model.metrics


def test_default_rows_include_the_six_harmful_evaluation_halves():
    harmful = builtin_names("harmful")
    assert tuple(f"concept:{n}" for n in harmful) == CONCEPT_SETS
    assert set(CONCEPT_SETS) <= set(DEFAULT_SETS)
    for spec in CONCEPT_SETS:
        ps = load_pair_set(spec)
        name = spec.removeprefix("concept:")
        assert ps.concept == name and ps.metric == f"logodds:{spec}"
        assert {p.prompt for p in ps.pairs} == _prompts(load_for_evaluation(name))
    assert split_record(load_builtin("toxicity"))["split"] == "none"
