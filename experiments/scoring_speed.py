"""Old vs new scoring, timed side by side in one run on one model (issue 32, item 3).

    python experiments/scoring_speed.py [--model default] [--pairs 40] [--examples 24]
        [--reps 3] [--threads 2] [--out FILE]

- **Log-odds** of ``--pairs`` pairs (the first built-in pair sets of ``evaluate``, a fixed
  sample): *old* = one forward per example (:func:`geomsafe.evaluate.logodds.
  response_logprobs`, each pair's prompt run twice, as ``pair_logodds`` did), *new* =
  :func:`~geomsafe.evaluate.logodds.pair_logodds` (the prompt once, both responses from its
  key/value cache, one side after the other), and *new, together* (both sides in one forward
  over the cache expanded to them). Same batch size (rows per forward) for all.
- **predict per example** on ``--examples`` examples of the emergent-misalignment
  ``insecure.jsonl`` (a fixed sample): *old* = the prompt-only pass for the last prompt token
  (:func:`~geomsafe.projection.prompt_projection`) + the prompt+response pass
  (:func:`~geomsafe.projection.project`), as ``predict --no-generate`` ran them; *new* =
  :func:`~geomsafe.projection.project_with_prompt` (one pass). Directions: random unit vectors
  on the built-in harmful concepts at fixed layers (the deepest, which bounds the passes, is
  ``--layer``); the time does not depend on which directions are projected on.

Repetitions are interleaved (the order rotates each round), the first round is a warm-up and
is not counted; the ratio is old / new of the median over the counted rounds. The values are
compared too: per-pair log-odds (max |old - new|, must be <= 1e-5) and per-example
prompt-anchored shifts (max |old - new|). Prints a table and writes a JSON record.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import geomsafe
from geomsafe.artefacts import atomic_write_text
from geomsafe.atlas import FeatureAtlas
from geomsafe.concepts import builtin_names
from geomsafe.datasets import load_dataset
from geomsafe.evaluate import logodds
from geomsafe.evaluate.logodds import ResponsePair, pair_logodds, response_logprobs
from geomsafe.evaluate.pairsets import load_pair_set
from geomsafe.models import LoadedModel, load
from geomsafe.projection import project, project_with_prompt, prompt_projection
from geomsafe.threads import torch_threads

INSECURE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "emergent-misalignment"
    / "data"
    / "insecure.jsonl"
)
RESULTS = Path.home() / ".cache" / "geomsafe" / "results" / "scoring_speed.json"
SETS = ("advice", "concept:toxicity", "concept:deception", "concept:power_seeking")


def old_logodds(lm: LoadedModel, pairs: list[ResponsePair], batch_size: int) -> list[float]:
    """The former ``pair_logodds``: every example (prompt + response) in its own row."""
    examples = [ex for p in pairs for ex in p.examples()]
    s = response_logprobs(lm, examples, batch_size=batch_size, progress=False)
    return [s[2 * k].per_token - s[2 * k + 1].per_token for k in range(len(pairs))]


def together_logodds(lm: LoadedModel, pairs: list[ResponsePair], batch_size: int) -> list[float]:
    """``pair_logodds`` with both sides of a batch in one forward (cache expanded to 2B rows)."""
    inner = logodds._pair_logps
    logodds._pair_logps = functools.partial(inner, together=True)
    try:
        return pair_logodds(lm, pairs, batch_size=max(1, batch_size // 2), progress=False)
    finally:
        logodds._pair_logps = inner


def sample_pairs(n: int) -> list[ResponsePair]:
    per = -(-n // len(SETS))
    out: list[ResponsePair] = []
    for name in SETS:
        out += load_pair_set(name).subset(per, seed=0).pairs
    return out[:n]


def random_atlas(lm: LoadedModel, deepest: int) -> tuple[FeatureAtlas, list[str]]:
    names = builtin_names("harmful")
    gen = torch.Generator().manual_seed(0)
    layers = list(range(lm.n_layers))
    dirs, stats = {}, {}
    for k, name in enumerate(names):
        d = torch.randn(lm.n_layers, lm.d_model, generator=gen)
        dirs[name] = d / d.norm(dim=-1, keepdim=True)
        stats[name] = {"best_layer": max(0, deepest - 2 * k)}  # spread below the deepest
    kinds = dict.fromkeys(names, "harmful")
    return FeatureAtlas(layers, dirs, kinds, stats, {"model_spec": "random"}), names


def timed_rounds(arms: dict[str, Callable[[], Any]], reps: int) -> dict[str, dict[str, Any]]:
    """Each arm once per round, the order rotating; round 0 is a warm-up (not counted)."""
    names = list(arms)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    values: dict[str, Any] = {}
    for r in range(reps + 1):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            values[n] = arms[n]()
            if r > 0:
                seconds[n].append(time.perf_counter() - t0)
    out: dict[str, Any] = {
        n: {"seconds": seconds[n], "median_s": statistics.median(seconds[n])} for n in names
    }
    out["_values"] = values
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--examples", type=int, default=24)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16, help="rows per forward")
    ap.add_argument("--layer", type=int, default=24, help="deepest concept layer (predict)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    with torch_threads(args.threads), torch.no_grad():
        lm = load(args.model)
        pairs = sample_pairs(args.pairs)
        bs = args.batch_size
        lo = timed_rounds(
            {
                "old": lambda: old_logodds(lm, pairs, bs),
                "new": lambda: pair_logodds(lm, pairs, batch_size=bs, progress=False),
                "new_together": lambda: together_logodds(lm, pairs, bs),
            },
            args.reps,
        )
        lo_values = lo.pop("_values")
        lo_diff = {
            n: max(abs(a - b) for a, b in zip(lo_values["old"], lo_values[n], strict=True))
            for n in ("new", "new_together")
        }
        examples = load_dataset(INSECURE).sample(args.examples, 0).examples
        atlas, names = random_atlas(lm, min(args.layer, lm.n_layers - 1))
        kw = dict(batch_size=bs, progress=False)

        def old_predict() -> dict[str, torch.Tensor]:
            last = prompt_projection(lm, examples, atlas, names, **kw)
            data = project(lm, examples, atlas, names, **kw)
            return {n: data[n] - last[n] for n in names}

        def new_predict() -> dict[str, torch.Tensor]:
            data, last = project_with_prompt(lm, examples, atlas, names, **kw)
            return {n: data[n] - last[n] for n in names}

        pr = timed_rounds({"old": old_predict, "new": new_predict}, args.reps)
        pr_values = pr.pop("_values")
        pr_diff = max(float((pr_values["old"][n] - pr_values["new"][n]).abs().max()) for n in names)
        pr_scale = max(float(pr_values["old"][n].abs().max()) for n in names)
    record = {
        "model": lm.provenance(),
        "geomsafe_version": geomsafe.__version__,
        "threads": args.threads,
        "batch_size": bs,
        "logodds": {
            "pairs": len(pairs),
            "sets": list(SETS),
            **lo,
            "ratio_old_over_new": lo["old"]["median_s"] / lo["new"]["median_s"],
            "ratio_old_over_new_together": lo["old"]["median_s"] / lo["new_together"]["median_s"],
            "max_abs_diff": lo_diff,
        },
        "predict": {
            "examples": len(examples),
            "deepest_layer": max(atlas.best_layer(n) for n in names),
            **pr,
            "s_per_example_old": pr["old"]["median_s"] / len(examples),
            "s_per_example_new": pr["new"]["median_s"] / len(examples),
            "ratio_old_over_new": pr["old"]["median_s"] / pr["new"]["median_s"],
            "max_abs_diff": pr_diff,
            "max_abs_value": pr_scale,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    L, P = record["logodds"], record["predict"]
    print(f"log-odds, {L['pairs']} pairs, median of {args.reps} interleaved rounds:")
    for n in ("old", "new", "new_together"):
        print(f"  {n:<13} {L[n]['median_s']:8.2f} s")
    print(
        f"  ratio old/new {L['ratio_old_over_new']:.2f}x "
        f"(together {L['ratio_old_over_new_together']:.2f}x); "
        f"max |old - new| per pair {lo_diff['new']:.1e} (together {lo_diff['new_together']:.1e})"
    )
    print(f"predict per example, {P['examples']} examples (deepest layer {P['deepest_layer']}):")
    print(
        f"  old {P['s_per_example_old']:.3f} s, new {P['s_per_example_new']:.3f} s, "
        f"ratio {P['ratio_old_over_new']:.2f}x; max |old - new| {pr_diff:.1e} "
        f"(values up to {pr_scale:.2f})"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
