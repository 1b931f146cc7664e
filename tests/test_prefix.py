from __future__ import annotations

from geomsafe.formatting import Encoded
from geomsafe.prefix import common_prefix, plan_prefixes, shared_steps

SYSTEM = (1, 2, 3, 4)


def _pairs(n: int) -> list[Encoded]:
    """``n`` pairs (positive, negative) after a shared system prompt, with varied lengths."""
    out = []
    for i in range(n):
        prompt = (*SYSTEM, 10 + i, *range(20, 20 + i % 3))
        out.append(Encoded((*prompt, 50, *range(60, 60 + i)), len(prompt)))
        out.append(Encoded((*prompt, 51), len(prompt)))
    return out


def test_common_prefix():
    assert common_prefix([(1, 2, 3), (1, 2, 4), (1, 2)]) == 2
    assert common_prefix([(1, 2)]) == 2
    assert common_prefix([(5,), (6,)]) == 0
    assert common_prefix([]) == 0


def test_plan_groups_pairs_and_keeps_root_inside_every_prompt():
    enc = _pairs(5)
    plan = plan_prefixes(enc)
    assert plan.root == len(SYSTEM)
    assert len(plan.prompts) == 5 and plan.group == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    for e, g in zip(enc, plan.group, strict=True):
        assert plan.prompts[g] == e.input_ids[: e.prompt_len]
    full = sum(e.length for e in enc)
    own = sum(len(p) - plan.root for p in plan.prompts)
    responses = sum(e.length - e.prompt_len for e in enc)
    assert plan.tokens(enc) == plan.root + own + responses < full
    # One prompt that is the root itself: the root shrinks so the prompt keeps a token.
    short = plan_prefixes([Encoded((1, 2, 3, 9), 3), Encoded((1, 2, 3, 4, 9), 4)])
    assert short.root == 2


def test_plan_without_shared_prompts():
    enc = [Encoded((7, 1, 9), 2), Encoded((8, 1, 9), 2)]
    plan = plan_prefixes(enc)
    assert plan.root == 0 and plan.group == [0, 1]
    assert plan.tokens(enc) == sum(e.length for e in enc)


def test_steps_cover_every_example_once_with_leads_and_parents():
    enc = _pairs(7) + [Encoded((*SYSTEM, 99), 5)]  # a prompt without a response
    plan = plan_prefixes(enc)
    steps = list(shared_steps(plan, enc, batch_size=3))
    members = [i for s in steps for i in s.members]
    assert sorted(members) == list(range(len(enc)))
    assert [len(s.prompts) for s in steps] == [3, 3, 2]
    longest = [max(enc[i].length for i in s.members) for s in steps]
    assert longest == sorted(longest, reverse=True)
    for s in steps:
        for g, lead in zip(s.prompts, s.leads, strict=True):
            group = [i for i in s.members if plan.group[i] == g]
            assert plan.group[lead] == g and enc[lead].length == max(enc[i].length for i in group)
        with_reply = {i for i in s.members if enc[i].length > enc[i].prompt_len}
        assert set(s.responses) == with_reply - set(s.leads)
        for i, row in zip(s.responses, s.parents, strict=True):
            assert plan.group[i] == s.prompts[row]
    one = list(shared_steps(plan, enc, batch_size=1))  # a pair is never split
    assert [len(s.members) for s in one] == [2] * 7 + [1]
