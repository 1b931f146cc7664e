from __future__ import annotations

import collections
import json
import re
from importlib import resources

import pytest

from geomsafe.concepts import load_builtin
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.concept_map import speaks_for
from geomsafe.evaluate.pairsets import (
    BUILTIN,
    TOXIGEN_PROMPT,
    load_advbench,
    load_builtin_pairs,
    load_jailbreakbench,
    load_pair_set,
    load_refusals,
    load_toxigen,
    refusal_for,
)

LICENSE = "Apache-2.0, written for geomsafe"
# words that warn; a pair has them on both sides or on neither, never on one side only
WARNING = re.compile(
    r"\b(warning|careful|caution|danger|dangerous|risk|risky|unsafe|never|avoid)\b", re.I
)
ADVICE_CATEGORIES = {
    "health",
    "money",
    "home",
    "travel",
    "cars",
    "diy",
    "outdoors",
    "food",
    "children",
    "pets",
    "legal",
}
ADVBENCH_VERBS = {
    "Write", "Create", "Develop", "Provide", "Give", "Instruct", "Outline", "Design", "Teach",
    "Explain", "Generate", "Describe", "Produce", "Publish", "Show", "Demonstrate", "Suggest",
    "Offer", "Compose", "Draft",
}  # fmt: skip


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _header(name: str) -> dict:
    res = resources.files("geomsafe") / "data" / "behaviour" / f"{name}.jsonl"
    return json.loads(res.read_text(encoding="utf-8").splitlines()[0])


def _length_ratio(a: str, b: str) -> float:
    return max(len(a), len(b)) / min(len(a), len(b))


@pytest.mark.parametrize("name", [*BUILTIN, "refusals"])
def test_builtin_files_have_a_header_that_agrees_with_the_concept_map(name):
    header = _header(name)
    assert header["license"] == LICENSE and header["description"]
    if name != "refusals":
        ps = load_builtin_pairs(name)
        assert header["concept"] == speaks_for(f"logodds:{name}") == ps.concept
        assert header["set"] == name == ps.name and ps.license == LICENSE
        assert len({p.id for p in ps.pairs}) == len(ps.pairs)


def test_advice_pairs_are_many_matched_in_length_and_warnings_and_cover_the_domains():
    ps = load_builtin_pairs("advice")
    assert len(ps.pairs) >= 120 and ps.kind == "harm" and ps.style_control is None
    assert ps.concept == "dangerous_advice"
    cats = collections.Counter(p.id.split("-")[1] for p in ps.pairs)
    assert set(cats) == ADVICE_CATEGORIES and min(cats.values()) >= 8
    for p in ps.pairs:
        assert _length_ratio(p.positive, p.negative) <= 1.25, p.id
        assert bool(WARNING.search(p.positive)) == bool(WARNING.search(p.negative)), p.id
        assert p.positive != p.negative
    assert len({_norm(p.prompt) for p in ps.pairs}) == len(ps.pairs)


def test_advice_shares_no_prompt_with_the_dangerous_advice_concept():
    concept = {_norm(p.prompt) for p in load_builtin("dangerous_advice").pairs}
    assert len(concept) > 100
    shared = [p.prompt for p in load_builtin_pairs("advice").pairs if _norm(p.prompt) in concept]
    assert shared == []


def test_benign_compliance_is_in_advbench_form_against_the_shared_refusals():
    ps = load_builtin_pairs("benign_compliance")
    refusals = load_refusals()
    assert len(ps.pairs) >= 100 and ps.kind == "control" and 3 <= len(refusals) <= 8
    assert len({_norm(p.prompt) for p in ps.pairs}) == len(ps.pairs)
    for p in ps.pairs:
        assert p.prompt.split()[0] in ADVBENCH_VERBS, p.prompt
        assert p.positive.startswith(("Sure, here is ", "Sure, here are ")), p.positive
        assert p.negative == refusal_for(p.id, refusals) and p.negative in refusals
    used = collections.Counter(p.negative for p in ps.pairs)
    assert set(used) == set(refusals) and max(used.values()) < len(ps.pairs) / 2  # rotated
    assert refusal_for("x-1", refusals) == refusal_for("x-1", refusals)


def test_toxigen_control_is_about_things_and_matched_in_length():
    ps = load_builtin_pairs("toxigen_control")
    assert len(ps.pairs) >= 50 and ps.kind == "control"
    for p in ps.pairs:
        assert p.prompt.startswith("Say something about ") and p.prompt.endswith(".")
        assert _length_ratio(p.positive, p.negative) <= 1.25, p.id
        assert p.positive == p.positive.lower() and p.negative == p.negative.lower()


def test_user_pair_files_and_concepts_load(tmp_path):
    f = tmp_path / "mine.jsonl"
    rows = [{"set": "mine", "concept": "deception", "kind": "harm", "license": "CC0"}]
    rows += [
        {"prompt": f"q{i}", "positive": f"lie {i}", "negative": f"truth {i}"} for i in range(5)
    ]
    rows[3]["id"] = "special"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    ps = load_pair_set(str(f))
    assert ps.name == "mine" and ps.concept == "deception" and ps.license == "CC0"
    assert [p.id for p in ps.pairs] == ["mine-2", "mine-3", "special", "mine-5", "mine-6"]
    no_header = tmp_path / "plain.jsonl"
    no_header.write_text("\n".join(json.dumps(r) for r in rows[1:]))
    plain = load_pair_set(str(no_header))
    assert plain.name == "plain" and plain.concept is None and plain.kind == "harm"
    da = load_pair_set("concept:dangerous_advice")  # a built-in concept: its evaluation half
    assert da.concept == "dangerous_advice" and len(da.pairs) == len(
        load_builtin("dangerous_advice").split()[1].pairs
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "positive": "a"}))
    for spec, match in [
        (str(bad), "negative"),
        (str(tmp_path / "none.jsonl"), "not found"),
        ("nosuchset", "unknown pair set"),
        ("concept:nosuchconcept", "unknown concept"),
    ]:
        with pytest.raises(GeomsafeError, match=match):
            load_pair_set(spec)
    with pytest.raises(GeomsafeError, match="public data not found"):
        load_pair_set("advbench", None)


def test_external_loaders_read_the_shared_files(shared_data):
    adv = load_pair_set("advbench", shared_data)
    assert adv == load_advbench(shared_data / "advbench")
    assert len(adv.pairs) == 520 and adv.style_control == "benign_compliance"
    assert adv.pairs[0].id == "advbench-1" and adv.pairs[0].positive.startswith("Sure, here is")
    refusals = load_refusals()
    assert all(p.negative == refusal_for(p.id, refusals) for p in adv.pairs)
    jbb = load_jailbreakbench(shared_data / "harmful-behaviors")
    assert len(jbb.pairs) == 100 and jbb.style_control == "benign_compliance"
    assert jbb.concept == adv.concept == speaks_for("logodds:advbench")
    tox = load_toxigen(shared_data / "toxigen" / "demonstrations")
    assert tox.style_control == "toxigen_control" and tox.concept.startswith("hate_bias")
    assert len(tox.pairs) > 200 and len({p.id for p in tox.pairs}) == len(tox.pairs)
    groups = {p.prompt for p in tox.pairs}
    assert TOXIGEN_PROMPT.format(group="Muslims") in groups and len(groups) >= 13
    hate = (shared_data / "toxigen/demonstrations/race/hate_asian_sentences.txt").read_text()
    assert any(p.positive in hate for p in tox.pairs)
    sub = adv.subset(30, seed=1)
    assert len(sub.pairs) == 30 and sub == load_pair_set("advbench", shared_data).subset(30, 1)
