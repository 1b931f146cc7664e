"""The guard Pareto benchmark (issue 15 item 3): every guard x 3 strengths (+ unguarded) on
harmful-ish and benign training sets; behavioural harm ratio (with paired CI), activation
ratio, held-out task loss ratio and step-time ratio per cell; a frontier plot in the report and
a recommended default chosen from the data by a stated rule.

    python experiments/guard_pareto.py [--model default] [--quick] [--out DIR] \\
        [--datasets insecure,jailbroken,concept:dangerous_advice,task:code] \\
        [--guards orthogonal,steer,ablate,projection,covariance] [--strengths low,mid,high] \\
        [--steps 30] [--n-train 160] [--pairs 50] [--rule-rows advice] [--harm-rule worst] \\
        [--rows jailbreakbench,toxigen] [--pilot-heldout 16] [--pilot-steps 20] [--data-root DIR]

1. Atlas of ``--concepts`` (harmful) and ``--targets`` (for covariance) from the base model,
   ``--atlas-pairs`` pairs each (the same pairs the held-out concept rows exclude), middle third
   of the layers (or ``--atlas``).
2. The base model's per-pair log-odds (rows ``advice`` and ``concept:<name>``, plus the
   ``--rows`` pair sets with their style controls, whose harm measure is ``<row>-controlled``
   = change minus the control's change) and prompt projections: once, in ``OUT/base.json``.
3. Per cell (``OUT/cells/*.json``, finished cells skipped on a rerun): LoRA fine-tune,
   measure, time guarded vs unguarded steps side by side (``lib.pareto.run``).
4. ``OUT/pareto.json`` + ``OUT/pareto.md``; ``geomsafe report OUT`` draws the frontier.

``--summarise-only``: run nothing, summarise the grid's finished cells (cells not run are left
out and listed). ``--quick``: a small size to try it (24 training examples, 6 steps, 16 pairs
per row).
Data sets: ``lib.pareto.data``; strengths: ``lib.pareto.grid``; the rule:
``lib.pareto.frontier``.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from pathlib import Path

import torch

from geomsafe.atlas import FeatureAtlas
from geomsafe.datasets import resolve_data_root
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.logodds import refuse_overlap
from geomsafe.evaluate.pairsets import load_with_controls
from geomsafe.guard import GuardConfig, PilotConfig
from geomsafe.guard.resolve import concept_names
from geomsafe.models import load
from geomsafe.options import split_csv
from lib.common import RESULTS, machine
from lib.guard_setup import eval_questions, middle_atlas, recipe
from lib.pareto import harm_rows, load_train_set, run_grid
from lib.pareto.grid import GUARD_NAMES, LEVELS
from lib.pareto.summary import HARM_RULES

DATASETS = "insecure,jailbroken,concept:dangerous_advice,task:code"
QUICK = dict(n_train=24, n_heldout=8, steps=6, pairs=16, n_prompts=8, time_steps=3, time_rounds=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--guards", default=",".join(GUARD_NAMES))
    ap.add_argument("--strengths", default=",".join(LEVELS))
    ap.add_argument("--concepts", default="toxicity,deception,dangerous_advice,power_seeking")
    ap.add_argument("--targets", default="helpfulness", help="target concepts (covariance)")
    ap.add_argument("--quick", action="store_true", help="a small size to try it")
    ap.add_argument(
        "--summarise-only",
        action="store_true",
        help="run nothing: summarise the finished cells of this grid (a partial grid)",
    )
    ap.add_argument("--n-train", type=int, default=160)
    ap.add_argument("--n-heldout", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=50, help="pairs per behavioural row")
    ap.add_argument("--n-prompts", type=int, default=48, help="prompts of the activation ratio")
    ap.add_argument("--time-steps", type=int, default=6)
    ap.add_argument("--time-rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--atlas-pairs", type=int, default=32)
    ap.add_argument("--atlas", help="a FeatureAtlas folder (its pairs must be --atlas-pairs)")
    ap.add_argument("--save-atlas")
    ap.add_argument(
        "--rule-rows",
        default="advice",
        help="harm measures the rule judges, e.g. advice,jailbreakbench-controlled ('all': every; "
        "'resolved': those the data set's unguarded run raised, each resolved on its own)",
    )
    ap.add_argument(
        "--harm-rule",
        choices=HARM_RULES,
        default="worst",
        help="several rule measures: judge the worst one's ratio (default) or the ratio of their "
        "summed changes (where one measure pushed below the base offsets another's harm)",
    )
    ap.add_argument(
        "--rows",
        default="",
        help="more behavioural pair sets (docs/evaluate.md, e.g. jailbreakbench,toxigen); a set "
        "with a style control brings it, and its harm measure is <row>-controlled",
    )
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument(
        "--pilot-heldout",
        type=int,
        default=PilotConfig.heldout,
        help="ablate@pilot: training examples held out of the pilot and compared (part of the "
        "folder's settings)",
    )
    ap.add_argument("--pilot-steps", type=int, default=PilotConfig.steps)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=str(RESULTS / "guard_pareto"))
    args = ap.parse_args()
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    concepts = split_csv(args.concepts)
    rows = harm_rows(concepts, n_pairs=args.pairs, atlas_pairs=args.atlas_pairs, seed=args.seed)
    more, controls = load_with_controls(
        split_csv(args.rows), args.pairs, args.seed, resolve_data_root(args.data_root)
    )
    rows += more
    if len({ps.name for ps in rows}) < len(rows):
        raise GeomsafeError("--rows repeats a row the grid measures already (advice, concept:*)")
    lm = load(args.model)
    if args.atlas:
        atlas = FeatureAtlas.load(args.atlas)
    else:
        atlas = middle_atlas(
            lm,
            concepts,
            split_csv(args.targets),
            None,
            args.atlas_pairs,
            args.seed,
            args.save_atlas,
        )
    print(f"atlas ready ({time.perf_counter() - t0:.0f} s): layers {atlas.layers}")
    refuse_overlap(rows, atlas.stats)  # no row may hold a prompt a direction was built from
    sets = [
        load_train_set(
            d,
            lm.tokenizer,
            n_train=args.n_train,
            n_heldout=args.n_heldout,
            max_length=args.max_length,
            data_root=args.data_root,
            atlas_pairs=args.atlas_pairs,
            seed=args.seed,
        )
        for d in split_csv(args.datasets)
    ]
    cfg = dataclasses.replace(
        recipe(args),
        time_steps=args.time_steps,
        time_rounds=args.time_rounds,
        n_boot=args.n_boot,
        rule_rows=split_csv(args.rule_rows),
        harm_rule=args.harm_rule,
    )
    summary = run_grid(
        lm,
        atlas,
        sets,
        rows,
        eval_questions(args.n_prompts),
        args.out,
        guards=split_csv(args.guards),
        strengths=split_csv(args.strengths),
        config=cfg,
        guard_config=GuardConfig(
            concepts=concept_names(concepts),
            pilot=PilotConfig(steps=args.pilot_steps, heldout=args.pilot_heldout),
        ),
        controls=controls,
        run_missing=not args.summarise_only,
        extra={
            "model": args.model,
            "machine": machine(),
            "command": "python experiments/guard_pareto.py " + " ".join(sys.argv[1:]),
        },
    )
    best = summary["recommended"]
    print((Path(args.out) / "pareto.md").read_text())
    if best:
        print(f"recommended: {best['key']} (meets goal: {best['meets_goal']})")
    print(f"total {time.perf_counter() - t0:.0f} s; wrote {args.out}/pareto.json")


if __name__ == "__main__":
    try:
        main()
    except GeomsafeError as exc:  # bad input (a data set, a row, a folder): one line
        raise SystemExit(f"error: {exc}") from None
