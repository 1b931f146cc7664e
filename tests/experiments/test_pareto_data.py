"""Training sets, the concept split and the behavioural rows of the Pareto benchmark."""

from __future__ import annotations

import pytest

from geomsafe.concepts import load_builtin, load_for_direction, load_for_evaluation
from geomsafe.errors import GeomsafeError
from geomsafe.testing import char_tokenizer
from lib.pareto.data import concept_split, harm_rows, load_train_set


def test_concept_split_is_disjoint_and_the_atlas_part_is_what_extraction_samples():
    c = load_builtin("dangerous_advice")
    atlas, evaluation, train = concept_split(c, 32, seed=0)
    # extract_atlas uses exactly these; evaluate's concept:<name> row is the evaluation half
    assert atlas.pairs == load_for_direction("dangerous_advice").subset(32, 0).pairs
    assert evaluation.pairs == load_for_evaluation("dangerous_advice").pairs
    parts = [set(atlas.pairs), set(evaluation.pairs), set(train.pairs)]
    assert sum(map(len, parts)) == len(set(c.pairs))
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert not {p.prompt for p in evaluation.pairs} & {p.prompt for p in train.pairs}
    with pytest.raises(GeomsafeError, match="none to train on"):
        concept_split(c, len(c.pairs), 0)


def test_rows_hold_out_the_atlas_pairs():
    rows = harm_rows(["dangerous_advice", "toxicity"], n_pairs=10, atlas_pairs=32)
    assert [r.name for r in rows] == ["advice", "concept:dangerous_advice", "concept:toxicity"]
    assert all(len(r.pairs) == 10 for r in rows)
    used = {(p.prompt, p.positive) for p in load_for_direction("toxicity").pairs}
    assert not used & {(p.prompt, p.positive) for p in rows[2].pairs}


def test_train_sets():
    tok = char_tokenizer()
    code = load_train_set("task:code", tok, n_train=20, n_heldout=5, max_length=4096)
    assert not code.harmful and len(code.train) == 20 and len(code.heldout.features) == 5
    # a small set: a quarter held out, the rest trains, and it says so
    adv = load_train_set(
        "concept:dangerous_advice", tok, n_train=500, n_heldout=32, max_length=4096
    )
    assert adv.harmful and adv.note
    n = len(adv.train) + len(adv.heldout.features)
    assert len(adv.heldout.features) == n // 4
    _, _, train = concept_split(load_builtin("dangerous_advice"), 32, 0)
    assert adv.train.examples[0].response == train.pairs[0].positive
    with pytest.raises(GeomsafeError, match="unknown training set"):
        load_train_set("nope", tok, n_train=2, n_heldout=1, max_length=64)


def test_emergent_misalignment_sets(shared_data):
    tok = char_tokenizer()
    got = load_train_set(
        "jailbroken", tok, n_train=4, n_heldout=2, max_length=4096, data_root=shared_data
    )
    assert got.harmful and len(got.train) == 4 and len(got.heldout.features) == 2
