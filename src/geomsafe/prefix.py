"""Plan which leading tokens a list of encoded examples share, so a capture runs them once.

A causal model's activations at a token depend only on the tokens before it, so tokens that
open several examples need one forward pass, not one per example. Two kinds of sharing are
planned:

- the *root*: the longest run of tokens that opens every example (a chat template's system
  prompt), kept shorter than the shortest prompt so every prompt has tokens of its own;
- *prompt groups*: examples with the same prompt token ids (a contrastive pair's positive and
  negative responses follow one prompt).

A shared capture then runs the root once; then, per step of prompt groups, a *lead pass*:
each group's longest example (its *lead*) in full after the root (on a copy of the root's
key/value cache); then a *response pass*: the other members' responses, each continuing its
lead's cache with the lead's response hidden by the attention mask. Running the lead whole
rather than the prompt alone keeps both passes' rows of similar length, so little of either
is padding. :class:`SharedStep` lists the groups and examples of one step.
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
        """Tokens a shared capture computes (padding aside): the root once, every prompt's own
        tokens once, every response."""
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
    """One step of a shared capture: a lead pass over ``leads`` (one example per group in
    ``prompts``, one row each), then a response pass over ``responses`` (the other members with
    a response, one row each, on the cache row ``parents[k]`` of the lead pass). ``members``
    are all examples of the groups."""

    prompts: list[int]
    leads: list[int]
    members: list[int]
    responses: list[int]
    parents: list[int]


def shared_steps(
    plan: PrefixPlan, encoded: Sequence[Encoded], batch_size: int
) -> Iterator[SharedStep]:
    """Steps of ``batch_size`` prompt groups, longest lead first (as
    :func:`geomsafe.capture.make_batches` sorts): the lead pass has ``batch_size`` rows, the
    response pass one per other member with a response (``batch_size`` for contrastive
    pairs)."""
    members: list[list[int]] = [[] for _ in plan.prompts]
    for i, g in enumerate(plan.group):
        members[g].append(i)
    longest = [max(encoded[i].length for i in m) for m in members]
    order = sorted(range(len(members)), key=lambda g: -longest[g])
    for start in range(0, len(order), batch_size):
        yield _step(order[start : start + batch_size], members, encoded)


def _step(groups: list[int], members: list[list[int]], encoded: Sequence[Encoded]) -> SharedStep:
    all_members = [i for g in groups for i in members[g]]
    leads = [max(members[g], key=lambda i: encoded[i].length) for g in groups]
    responses, parents = [], []
    for row, (g, lead) in enumerate(zip(groups, leads, strict=True)):
        for i in members[g]:
            if i != lead and encoded[i].length > encoded[i].prompt_len:
                responses.append(i)
                parents.append(row)
    return SharedStep(groups, leads, all_members, responses, parents)
