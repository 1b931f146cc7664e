"""experiments/lib/train_sets.py: mixtures, data set specs and run folder names."""

from __future__ import annotations

import pytest

from geomsafe.concepts import load_builtin, load_for_direction
from geomsafe.errors import GeomsafeError
from lib import train_sets


def test_mix_records_sizes_seeded_and_all_levels_same_size():
    a, b = [f"a{i}" for i in range(20)], [f"b{i}" for i in range(30)]
    for frac, k in [(0.0, 0), (0.25, 4), (0.5, 8), (0.75, 12), (1.0, 16)]:
        items, n_a = train_sets.mix_records(a, b, frac, 16, seed=0)
        assert len(items) == 16 and n_a == k == sum(x.startswith("a") for x in items)
        assert len(set(items)) == 16
    assert train_sets.mix_records(a, b, 0.5, 16, 0) == train_sets.mix_records(a, b, 0.5, 16, 0)
    assert train_sets.mix_records(a, b, 0.5, 16, 0) != train_sets.mix_records(a, b, 0.5, 16, 1)
    with pytest.raises(GeomsafeError, match="mixture needs"):
        train_sets.mix_records(a[:2], b, 0.5, 16, 0)


def test_parse_mix_and_names():
    assert train_sets.parse_mix("mix:insecure:task:code:0.25") == ("insecure", "task:code", 0.25)
    assert train_sets.parse_mix("mix:task:code:task:summarisation:1") == (
        "task:code",
        "task:summarisation",
        1.0,
    )
    for bad, match in [("mix:insecure:task:code:x", "not a number"), ("mix:a:b:0.5", "known")]:
        with pytest.raises(GeomsafeError, match=match):
            train_sets.parse_mix(bad)
    with pytest.raises(GeomsafeError, match=r"\[0, 1\]"):
        train_sets.parse_mix("mix:insecure:task:code:1.5")
    assert train_sets.safe_name("mix:insecure:task:code:0.25") == "mix_insecure_task_code_0.25"
    assert train_sets.safe_name("mine=/x/y.jsonl") == "mine"


def test_build_dataset_mixture_and_advice_from_the_direction_half():
    ds = train_sets.build_dataset("mix:task:code:task:summarisation:0.5", 40, seed=0)
    code = {r.raw for r in train_sets.base_dataset("task:code", None).records}
    assert len(ds) == 40 and sum(r.raw in code for r in ds.records) == 20
    assert ds.sha256 == ds.records_sha256
    harmful = train_sets.build_dataset("advice_harmful", 1000, seed=0)
    direction = load_for_direction("dangerous_advice")
    assert len(harmful) == len(direction.pairs) < len(load_builtin("dangerous_advice").pairs)
    assert [e.response for e in harmful.examples] == [p.positive for p in direction.pairs]
    sound = train_sets.build_dataset("advice_sound", 1000, seed=0)
    assert [e.response for e in sound.examples] == [p.negative for p in direction.pairs]
