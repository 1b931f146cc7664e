"""Does `predict` rank data sets by how far fine-tuning on them really moves the model?

    python bench/predict_validation.py [--model default] [--steps 30] [--max-examples 64]
        [--datasets insecure,code,NAME=FILE.jsonl,...] [--atlas DIR]

For each data set (emergent-misalignment insecure, jailbroken, secure_small, insecure_small,
and the built-in benign task sets factual_qa, instruction_following, code, summarisation):
1. predict the shift per harmful concept (projection difference with the model's own greedy
   responses; prompt-anchored; first-order gradient and its alignment), on a fixed sample;
2. fine-tune LoRA briefly with one fixed recipe (same steps, lr, r, batch, seed for all);
3. measure the shift with geomsafe.projection: the projection at the last prompt token of a fixed
   probe prompt set (the built-in evaluation prompts), tuned minus base, per concept.
Reports the Spearman correlation between predicted and measured shift across data sets, per
concept and pooled over (data set, concept), and the share of data-set pairs ranked right.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from _common import RESULTS, machine, write_json
from geomsafe.atlas import FeatureAtlas
from geomsafe.bench.tasks import resolve_tasks
from geomsafe.datasets import load_dataset
from geomsafe.models import load
from geomsafe.predict import harmful_atlas, predict, probe_prompts
from geomsafe.projection import mean_projection, measured_shift
from geomsafe.train import TrainConfig, finetune

DATASETS = (
    "insecure",
    "jailbroken",
    "secure_small",
    "insecure_small",
    "factual_qa",
    "instruction_following",
    "code",
    "summarisation",
)
ESTIMATORS = ("projection_difference", "prompt_anchored", "gradient", "gradient_alignment")


def pair_accuracy(pred: list[float], meas: list[float]) -> float:
    pairs = [(i, j) for i, j in itertools.combinations(range(len(pred)), 2) if meas[i] != meas[j]]
    right = sum((pred[i] - pred[j]) * (meas[i] - meas[j]) > 0 for i, j in pairs)
    return right / len(pairs) if pairs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument(
        "--atlas",
        default=str(RESULTS / "audit-default"),
        help="audit folder with an atlas (extracted when missing; bench/audit_default.py "
        "writes one there)",
    )
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--max-examples", type=int, default=64)
    ap.add_argument("--train-examples", type=int, default=200)
    ap.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help="comma-separated built-in or public task names, or NAME=FILE.jsonl",
    )
    args = ap.parse_args()
    tasks = resolve_tasks(tuple(args.datasets.split(",")))  # a bad name fails before any work
    t0 = time.perf_counter()
    lm = load(args.model)
    if any((Path(args.atlas) / sub / "atlas.json").is_file() for sub in (".", "atlas")):
        atlas = FeatureAtlas.load(args.atlas)
    else:
        atlas = harmful_atlas(lm)
    names = atlas.harmful
    probes = probe_prompts(48)
    base_probe = mean_projection(lm, probes, atlas, names)  # every run's "before"
    recipe = TrainConfig(
        max_steps=args.steps,
        batch_size=4,
        learning_rate=2e-4,
        lora_r=8,
        max_length=256,
        truncate=True,
        seed=0,
        save_steps=10_000,
    )
    rows = []
    work = Path(tempfile.mkdtemp(prefix="geomsafe-predval-"))
    try:
        for task in tasks:
            name = task.name  # NAME of NAME=FILE.jsonl: the spec itself is no file or folder name
            ds = load_dataset(task.path).sample(args.train_examples, seed=0)
            t1 = time.perf_counter()
            pred = predict(
                lm,
                ds,
                atlas=atlas,
                max_examples=args.max_examples,
                max_new_tokens=32,
                gradient_examples=32,
                progress=False,
            )
            t_pred = time.perf_counter() - t1
            run = finetune(
                lm, ds, out=work / f"run-{name}", atlas=atlas, config=recipe, progress=False
            )
            tuned = run.lm
            shift = measured_shift(tuned, probes, atlas, names, base_projection=base_probe)
            row = {
                "dataset": name,
                "n_train": len(ds),
                "predict_seconds": t_pred,
                "measured": shift,
                **{e: {c.concept: getattr(c, e) for c in pred.concepts} for e in ESTIMATORS},
                "risk": {c.concept: c.risk for c in pred.concepts},
                "final_loss": run.metrics.get("final_loss"),
            }
            rows.append(row)
            print(
                f"{name:22s} pred(pd) "
                + " ".join(f"{c}={row['projection_difference'][c]:+.3f}" for c in names)
                + "\n"
                + " " * 23
                + "measured "
                + " ".join(f"{c}={shift[c]:+.3f}" for c in names),
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for est in ESTIMATORS:
        per_concept = {}
        for c in names:
            p = [r[est][c] for r in rows]
            m = [r["measured"][c] for r in rows]
            per_concept[c] = {
                "spearman": float(spearmanr(p, m).statistic),
                "pair_accuracy": pair_accuracy(p, m),
            }
        mean_p = [float(np.mean([r[est][c] for c in names])) for r in rows]
        mean_m = [float(np.mean([r["measured"][c] for c in names])) for r in rows]
        pooled_p = [r[est][c] for r in rows for c in names]
        pooled_m = [r["measured"][c] for r in rows for c in names]
        summary[est] = {
            "per_concept": per_concept,
            "mean_over_concepts": {
                "spearman": float(spearmanr(mean_p, mean_m).statistic),
                "pair_accuracy": pair_accuracy(mean_p, mean_m),
            },
            "pooled": {"spearman": float(spearmanr(pooled_p, pooled_m).statistic)},
        }
    print("\nSpearman(predicted, measured) across data sets")
    print(
        f"{'estimator':24s} {'mean-over-concepts':>18s} {'pair acc.':>9s} {'pooled':>7s}  "
        + " ".join(f"{c[:10]:>10s}" for c in names)
    )
    for est, s in summary.items():
        print(
            f"{est:24s} {s['mean_over_concepts']['spearman']:18.3f} "
            f"{s['mean_over_concepts']['pair_accuracy']:9.3f} {s['pooled']['spearman']:7.3f}  "
            + " ".join(f"{s['per_concept'][c]['spearman']:10.3f}" for c in names)
        )
    seconds = time.perf_counter() - t0
    print(f"\n{len(rows)} data sets, {seconds / 60:.1f} min")
    write_json(
        RESULTS / "predict_validation.json",
        {
            "rows": rows,
            "summary": summary,
            "seconds": seconds,
            "machine": machine(),
            "recipe": {
                "steps": args.steps,
                "batch_size": 4,
                "lr": 2e-4,
                "lora_r": 8,
                "max_length": 256,
                "train_examples": args.train_examples,
            },
            "command": f"python bench/predict_validation.py --model {args.model} --steps "
            f"{args.steps} --max-examples {args.max_examples} --train-examples "
            f"{args.train_examples}",
        },
    )


if __name__ == "__main__":
    main()
