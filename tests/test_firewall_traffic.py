from __future__ import annotations

import pytest

from geomsafe.errors import GeomsafeError
from geomsafe.firewall.traffic import (
    benign_split,
    builtin_tasks,
    harmful_items,
    sample,
    split,
    task_items,
)


def test_task_items_cover_every_builtin_task_with_responses():
    items = task_items()
    assert {i.source for i in items} == {f"task:{t}" for t in builtin_tasks()}
    assert all(i.example.response for i in items)
    assert len({(i.source, i.id) for i in items}) == len(items)


def test_split_is_per_source_seeded_and_disjoint():
    items = task_items()
    a, b = split(items, 0.5, seed=0)
    assert len(a) + len(b) == len(items)
    assert not {(i.source, i.id) for i in a} & {(i.source, i.id) for i in b}
    for source in {i.source for i in items}:
        n = sum(i.source == source for i in items)
        assert sum(i.source == source for i in a) == round(n / 2)
    assert split(items, 0.5, seed=0) == (a, b)
    assert split(items, 0.5, seed=1)[0] != a
    with pytest.raises(GeomsafeError, match="share"):
        split(items, 1.0, 0)


def test_benign_split_without_public_data_says_so(tmp_path):
    s = benign_split(tmp_path, 0.5, 0)
    assert s.notes and "XSTest" in s.notes[0]
    assert {i.source.split(":")[0] for i in s.calibration} == {"task"}


def test_public_sets_load_with_their_sizes(shared_data):
    items = harmful_items(("advbench", "harmbench", "jailbreakbench", "strongreject"), shared_data)
    counts = {s: sum(i.source == s for i in items) for s in {i.source for i in items}}
    assert counts == {"advbench": 520, "harmbench": 200, "jailbreakbench": 100, "strongreject": 313}
    s = benign_split(shared_data, 0.5, 0)
    assert sum(i.source == "xstest" for i in s.calibration) == 125
    assert len(sample(items, 10)) == 40
    with pytest.raises(GeomsafeError, match="unknown harmful set"):
        harmful_items(("nope",), shared_data)
