"""Plan which leading tokens a list of encoded examples share, so a capture runs them once.

A causal model's activations at a token depend only on the tokens before it, so tokens that
open several examples need one forward pass, not one per example. Two kinds of sharing are
planned:

- the *root*: the longest run of tokens that opens every example (a chat template's system
  prompt), kept shorter than the shortest prompt so every prompt has tokens of its own;
- *prompt groups*: examples with the same prompt token ids (a contrastive pair's positive and
  negative responses follow one prompt).

A shared capture then runs the root once, each prompt group's remaining prompt tokens once per
group (on a copy of the root's key/value cache), and each example's response tokens on its
group's cache. :class:`SharedStep` lists the groups and examples of one such step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from geomsafe.formatting import Encoded


@dataclass
class PrefixPlan:
    """``root`` tokens open every example; ``prompts`` are the distinct prompts (full token
    ids, root included) in order of first appearance; ``group[i]`` is example i's prompt."""

    root: int
    prompts: list[tuple[int, ...]]
    group: list[int]

    def tokens(self, encoded: Sequence[Encoded]) -> int:
        """Tokens a shared capture computes: the root once, every prompt's own tokens once,
        every response."""
        own = sum(len(p) - self.root for p in self.prompts)
        return self.root + own + sum(e.length - e.prompt_len for e in encoded)


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of ``seqs`` (0 for none)."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for k in range(n):
        tok = first[k]
        if any(s[k] != tok for s in seqs):
            return k
    return n


def plan_prefixes(encoded: Sequence[Encoded]) -> PrefixPlan:
    """Group examples by their prompt token ids and find the root every example opens with."""
    index: dict[tuple[int, ...], int] = {}
    group = []
    for enc in encoded:
        prompt = enc.input_ids[: enc.prompt_len]
        group.append(index.setdefault(prompt, len(index)))
    prompts = list(index)
    root = min(common_prefix(prompts), min(len(p) for p in prompts) - 1) if prompts else 0
    return PrefixPlan(max(root, 0), prompts, group)


@dataclass
class SharedStep:
    """One step of a shared capture: a prompt pass over ``prompts`` (group ids, one row each),
    then a response pass over ``responses`` (examples with a response, one row each, on the
    cache row ``parents[k]`` of the prompt pass). ``members`` are all examples of the groups."""

    prompts: list[int]
    members: list[int]
    responses: list[int]
    parents: list[int]


def shared_steps(
    plan: PrefixPlan, encoded: Sequence[Encoded], batch_size: int
) -> Iterator[SharedStep]:
    """Steps over prompt groups, longest example first (as :func:`capture.make_batches` sorts),
    each with at most ``batch_size`` examples unless one group alone has more."""
    members: list[list[int]] = [[] for _ in plan.prompts]
    for i, g in enumerate(plan.group):
        members[g].append(i)
    longest = [max(encoded[i].length for i in m) for m in members]
    order = sorted(range(len(members)), key=lambda g: -longest[g])
    step: list[int] = []
    count = 0
    for g in order:
        if step and count + len(members[g]) > batch_size:
            yield _step(step, members, encoded)
            step, count = [], 0
        step.append(g)
        count += len(members[g])
    if step:
        yield _step(step, members, encoded)


def _step(groups: list[int], members: list[list[int]], encoded: Sequence[Encoded]) -> SharedStep:
    all_members = [i for g in groups for i in members[g]]
    responses, parents = [], []
    for row, g in enumerate(groups):
        for i in members[g]:
            if encoded[i].length > encoded[i].prompt_len:
                responses.append(i)
                parents.append(row)
    return SharedStep(groups, all_members, responses, parents)
