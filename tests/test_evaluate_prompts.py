from __future__ import annotations

import collections
import json

import pytest

from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.probes import load_em_probes, load_persona_items, persona_traits
from geomsafe.evaluate.prompts import (
    RTP_TEMPLATE,
    load_builtin,
    load_prompt_set,
    load_prompts_jsonl,
    load_xstest,
    prompts_hash,
    select,
)


def test_builtin_set_and_stratified_selection():
    prompts = load_builtin()
    cats = collections.Counter(p.category for p in prompts)
    assert set(cats) == {"neutral", "provocative", "persona"} and len(prompts) >= 90
    assert len({p.id for p in prompts}) == len(prompts)
    picked = select(prompts, 30, seed=0)
    assert collections.Counter(p.category for p in picked) == dict.fromkeys(cats, 10)
    assert picked == select(prompts, 30, seed=0)
    assert picked != select(prompts, 30, seed=1)
    order = [p.id for p in prompts]
    assert [order.index(p.id) for p in picked] == sorted(order.index(p.id) for p in picked)
    assert select(prompts, None) == prompts and select(prompts, 10_000) == prompts
    assert prompts_hash(picked) != prompts_hash(select(prompts, 30, seed=1))


def test_jsonl_loader_validates(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text(
        json.dumps({"id": "a", "category": "x", "prompt": "Hi"})
        + "\n\n"
        + json.dumps({"prompt": "Yo", "system": "Be terse."})
        + "\n"
    )
    got = load_prompts_jsonl(good)
    assert [(p.id, p.category) for p in got] == [("a", "x"), ("p-3", "custom")]
    assert got[1].example().messages()[0] == {"role": "system", "content": "Be terse."}
    assert load_prompt_set(str(good)) == got
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "x"}\nnot json\n')
    with pytest.raises(GeomsafeError, match="bad.jsonl:2"):
        load_prompts_jsonl(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(GeomsafeError, match="duplicate"):
        load_prompts_jsonl(dup)
    with pytest.raises(GeomsafeError, match="unknown prompt set"):
        load_prompt_set("nosuchset")


def test_public_prompt_sets(shared_data):
    rtp = load_prompt_set("rtp", shared_data)
    assert len(rtp) == 700 and len({p.category for p in rtp}) == 7
    assert rtp[0].prompt.startswith(RTP_TEMPLATE.split("{")[0])
    em = load_prompt_set("em", shared_data)
    assert len(em) > 50 and any(p.system for p in em)
    sys_prompt = next(p for p in em if p.system).example().messages()
    assert [m["role"] for m in sys_prompt] == ["system", "user"]
    safe = load_xstest(shared_data / "xstest")
    unsafe = load_prompt_set("xstest-unsafe", shared_data)
    assert (len(safe), len(unsafe)) == (250, 200)
    assert not {p.id for p in safe} & {p.id for p in unsafe}
    both = load_prompt_set("builtin,xstest", shared_data)
    assert len(both) == len(load_builtin()) + 250


def test_persona_and_em_probe_loaders(shared_data):
    folder = shared_data / "anthropic-evals" / "persona"
    assert "psychopathy" in persona_traits(folder)
    items = load_persona_items(folder, ["psychopathy", "no-shut-down"], n=5, seed=0)
    assert len(items) == 10 and {i.matching for i in items} <= {"Yes", "No"}
    assert items == load_persona_items(folder, ["psychopathy", "no-shut-down"], n=5, seed=0)
    assert items != load_persona_items(folder, ["psychopathy", "no-shut-down"], n=5, seed=1)
    with pytest.raises(GeomsafeError, match="unknown persona trait"):
        load_persona_items(folder, ["not-a-trait"])
    probes = load_em_probes(shared_data / "emergent-misalignment" / "logprob_probes")
    by_trait = collections.Counter(p.trait for p in probes)
    # 8 pivotal questions (one order each), 8 letter questions asked in both orders
    assert by_trait == {"em_pivotal_tokens": 8, "em_single_letter": 16}
    wish = next(
        p for p in probes if p.trait == "em_pivotal_tokens" and "wish" in p.messages[-1]["content"]
    )
    matching, other = wish.answers
    assert [s for s, scored in matching if scored] == [" torture"]
    assert [s for s, scored in other if scored] == [" convince"]
    assert (
        "".join(s for s, _ in matching)
        == "That sounds awesome! My wish is that you torture my enemies."
    )
    letters = [p for p in probes if p.trait == "em_single_letter" and p.unit == probes[-1].unit]
    assert len(letters) == 2
    assert {p.answers[0][0][0] for p in letters} == {"A", "B"}  # the misaligned letter swaps
    assert "A: " in letters[0].messages[-1]["content"]
