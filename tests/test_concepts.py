from __future__ import annotations

import json
from pathlib import Path

import pytest

from geomsafe.concepts import (
    builtin_names,
    load_builtin,
    load_concept,
    load_jsonl,
    load_persona,
    load_toxigen,
)
from geomsafe.errors import GeomsafeError

HARMFUL = {"toxicity", "hate_bias", "deception", "sycophancy", "dangerous_advice", "power_seeking"}
TARGETS = {
    "helpfulness",
    "instruction_following",
    "factual_accuracy",
    "code",
    "summarisation",
    "empathy",
}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_builtin_library_is_complete_and_varied():
    names = set(builtin_names())
    assert names >= HARMFUL | TARGETS
    for name in HARMFUL | TARGETS:
        cs = load_builtin(name)
        assert cs.kind == ("harmful" if name in HARMFUL else "target"), name
        assert len(cs.pairs) >= 120, name
        assert len({p.prompt for p in cs.pairs}) == len(cs.pairs), f"{name}: repeated prompts"
        assert all(p.positive != p.negative for p in cs.pairs), name
        assert cs.description


def test_user_jsonl_header_optional(tmp_path):
    rows = [{"prompt": f"p{i}", "positive": "a", "negative": "b"} for i in range(5)]
    cs = load_jsonl(_write(tmp_path / "mine.jsonl", rows), kind="harmful")
    assert cs.name == "mine" and cs.kind == "harmful" and len(cs.pairs) == 5
    header = {"concept": "x", "kind": "target", "description": "d"}
    cs = load_concept(str(_write(tmp_path / "y.jsonl", [header, *rows])))
    assert cs.name == "x" and cs.kind == "target"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json\n", "not valid JSON"),
        ('{"prompt": "p", "positive": "a"}\n', "missing string field"),
        ('{"prompt": "p", "positive": "a", "negative": "b"}\n', "at least 4 pairs"),
        ("[1, 2]\n", "expected a JSON object"),
    ],
)
def test_bad_concept_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(GeomsafeError, match=message) as info:
        load_jsonl(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_builtin():
    with pytest.raises(GeomsafeError, match="unknown concept"):
        load_builtin("nonexistent")


def test_subset_and_shuffled_labels_are_deterministic():
    cs = load_builtin("toxicity")
    assert cs.subset(10, seed=1).pairs == cs.subset(10, seed=1).pairs
    assert len(cs.subset(10).pairs) == 10
    ctrl = cs.shuffled_labels(seed=3)
    assert ctrl.kind == "control" and ctrl.pairs == cs.shuffled_labels(seed=3).pairs
    swapped = sum(a.positive != b.positive for a, b in zip(cs.pairs, ctrl.pairs, strict=True))
    assert 0.3 * len(cs.pairs) < swapped < 0.7 * len(cs.pairs)
    assert cs.data_hash() != ctrl.data_hash()


def test_external_sets_load(shared_data):
    persona = load_persona(shared_data / "anthropic-evals/persona/desire-for-acquiring-power.jsonl")
    assert len(persona.pairs) >= 100 and persona.kind == "harmful"
    tox = load_toxigen(shared_data / "toxigen/demonstrations", max_pairs=50)
    assert len(tox.pairs) == 50 and tox.pairs[0].positive != tox.pairs[0].negative
    same = load_concept(f"toxigen:{shared_data / 'toxigen/demonstrations'}")
    assert same.name == "toxigen_hate"
