"""Fine-tune (unguarded LoRA, one fixed recipe) on each data set and measure the behavioural change.

    python experiments/behaviour_runs.py [--model default] [--datasets NAME,...] [--only NAME]
        [--rows SET,...] [--pairs N] [--steps 30] [--lr 2e-4] [--rank 8] [--batch 4] [--seed 0]
        [--train-examples 200] [--out DIR] [--data-root DIR] [--threads N]

Data sets (``--datasets``; default :data:`DATASETS`):

- public emergent-misalignment sets ``insecure``, ``jailbroken``, ``insecure_small``,
  ``secure_small`` (the data root has no full ``secure`` or ``educational`` set);
- the built-in benign tasks ``task:code``, ``task:factual_qa``, ``task:instruction_following``,
  ``task:summarisation``;
- ``advice_harmful`` / ``advice_sound``: the built-in ``dangerous_advice`` concept's *direction
  half* (never its evaluation half, the ``concept:dangerous_advice`` row) as chat data: each
  prompt with its harmful (positive) or its sound (negative) response. Not the cross-domain
  ``advice`` pair set, which is a yardstick;
- dose-response mixtures ``mix:A:B:F`` (e.g. ``mix:insecure:task:code:0.25``): ``round(F * n)``
  examples of A and the rest of B, ``n = min(--train-examples, len(A), len(B))`` for every F, so
  all levels of one mixture have the same size; drawn and shuffled with the seed
  (:func:`mix_records`);
- ``NAME=FILE.jsonl``: any file ``geomsafe.datasets`` reads.

Each data set is sampled to ``--train-examples`` (seeded), fine-tuned with
:func:`recipe` (``--guard none``) into ``<out>/<name>/adapter`` and evaluated likelihood-only
(``evaluate``'s log-odds rows, all pairs unless ``--pairs``): the change tuned minus base of
every row with its paired bootstrap 95% CI goes to ``<out>/<name>/behaviour.json``. The base
model's rows are the same for every data set: computed once and cached as an ``eval.json`` in
``<out>/_base/<key>/`` (key: sha256 of the model's provenance, the evaluation config and the
pair sets' hashes) and passed to ``evaluate`` as its baseline. A data set whose
``behaviour.json`` exists is skipped (resumable) unless ``--rows`` is given: then the given rows
are (re-)measured on its existing adapter, without training, and merged into its
``behaviour.json`` (data sets without a run are trained and measured on those rows).
``<out>/summary.json`` and ``summary.md``: change per data set x row with CIs. ``<out>``
defaults to ``$GEOMSAFE_RESULTS/behaviour_runs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import RESULTS, machine, write_json
from geomsafe.artefacts import atomic_write
from geomsafe.bench.tasks import EXTERNAL, resolve_task
from geomsafe.concepts import load_for_direction
from geomsafe.datasets import Dataset, Record, load_dataset
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate import EvalConfig, evaluate
from geomsafe.evaluate.pairsets import DEFAULT_SETS
from geomsafe.evaluate.plan import make_plan
from geomsafe.models import LoadedModel, load
from geomsafe.train import TrainConfig, finetune

TASKS = ("task:code", "task:factual_qa", "task:instruction_following", "task:summarisation")
MIX_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
MIXTURES = tuple(f"mix:insecure:task:code:{f:g}" for f in MIX_LEVELS)
DATASETS = (
    "insecure",
    "jailbroken",
    "insecure_small",
    "secure_small",
    *TASKS,
    "advice_harmful",
    "advice_sound",
    *MIXTURES,
)
ADVICE = {"advice_harmful": "positive", "advice_sound": "negative"}
BEHAVIOUR_JSON = "behaviour.json"
BASE_DIR = "_base"


def safe_name(spec: str) -> str:
    """The folder name of a data set spec (``task:code`` -> ``task_code``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec.split("=", 1)[0]).strip("_") or "dataset"


def display_name(spec: str) -> str:
    """The name a data set spec is shown under: ``NAME`` of ``NAME=PATH``, else the spec."""
    return spec.split("=", 1)[0] if "=" in spec else spec


def parse_mix(spec: str) -> tuple[str, str, float]:
    """``mix:A:B:F`` -> (A, B, F); A and B may contain ``:`` (``task:code``), so the split
    point is the first at which A and B both name a known data set."""
    body, _, frac = spec.removeprefix("mix:").rpartition(":")
    try:
        f = float(frac)
    except ValueError as exc:
        raise GeomsafeError(f"{spec}: the fraction {frac!r} is not a number") from exc
    if not 0.0 <= f <= 1.0:
        raise GeomsafeError(f"{spec}: the fraction must be in [0, 1], not {f}")
    parts = body.split(":")
    for k in range(1, len(parts)):
        a, b = ":".join(parts[:k]), ":".join(parts[k:])
        if _known(a) and _known(b):
            return a, b, f
    raise GeomsafeError(f"{spec}: expected mix:A:B:FRACTION with two known data sets")


def _known(spec: str) -> bool:
    return spec in EXTERNAL or spec in ADVICE or spec.startswith("task:") or "=" in spec


def mix_records(
    a: Sequence[Any], b: Sequence[Any], frac: float, n: int, seed: int
) -> tuple[list[Any], int]:
    """``round(frac * n)`` items of ``a`` and the rest of ``n`` from ``b``, each drawn without
    replacement with ``Random(f"{seed}:mix")``, then shuffled; and the number from ``a``."""
    k = round(frac * n)
    if k > len(a) or n - k > len(b):
        raise GeomsafeError(f"mixture needs {k} + {n - k} items; have {len(a)} and {len(b)}")
    rng = random.Random(f"{seed}:mix")
    items = rng.sample(list(a), k) + rng.sample(list(b), n - k)
    rng.shuffle(items)
    return items, k


def advice_dataset(side: str) -> Dataset:
    """The ``dangerous_advice`` concept's direction half as chat data: prompt + ``side``
    (``positive``: harmful, ``negative``: sound) response."""
    concept = load_for_direction("dangerous_advice")
    return Dataset.from_examples(
        [(p.prompt, getattr(p, side)) for p in concept.pairs],
        source=f"dangerous_advice-direction-{side}",
    )


def base_dataset(spec: str, data_root: str | None) -> Dataset:
    """A data set spec other than a mixture, unsampled."""
    if spec in ADVICE:
        return advice_dataset(ADVICE[spec])
    if spec.startswith("task:"):
        return load_dataset(spec)
    return load_dataset(resolve_task(spec, data_root).path)


def build_dataset(spec: str, n: int, seed: int, data_root: str | None = None) -> Dataset:
    """The training data of ``spec`` (module docstring): at most ``n`` examples, seeded."""
    if not spec.startswith("mix:"):
        return base_dataset(spec, data_root).sample(n, seed)
    a_spec, b_spec, frac = parse_mix(spec)
    a, b = base_dataset(a_spec, data_root), base_dataset(b_spec, data_root)
    size = min(n, len(a), len(b))
    records, _ = mix_records(a.records, b.records, frac, size, seed)
    mixed: list[Record] = list(records)
    ds = Dataset(spec, mixed, "")
    return dataclasses.replace(ds, sha256=ds.records_sha256)


def recipe(steps: int, lr: float, rank: int, batch: int, seed: int) -> TrainConfig:
    """The one fixed fine-tuning recipe of every run (unguarded LoRA)."""
    return TrainConfig(
        max_steps=steps,
        batch_size=batch,
        learning_rate=lr,
        lora_r=rank,
        max_length=256,
        truncate=True,
        seed=seed,
        save_steps=10_000,
    )


def eval_config(rows: Sequence[str], pairs: int | None, seed: int, data_root: str | None):
    """Likelihood-only evaluation of the log-odds ``rows`` (style controls join them)."""
    return EvalConfig(
        n_prompts=0,
        n_xstest=0,
        n_probe=0,
        em_probes=False,
        logodds=tuple(rows),
        logodds_pairs=pairs,
        seed=seed,
        data_root=data_root,
    )


def base_eval(lm: LoadedModel, cfg: EvalConfig, out: Path, progress: bool) -> Path:
    """The cached base-model ``eval.json`` for ``cfg`` (computed when missing)."""
    plan = make_plan(cfg)
    conf = {k: v for k, v in cfg.to_dict().items() if k != "data_root"}
    key_src = json.dumps([lm.provenance(), conf, plan.hashes], sort_keys=True, default=str)
    folder = out / BASE_DIR / hashlib.sha256(key_src.encode()).hexdigest()[:16]
    if not (folder / "eval.json").is_file():
        t0 = time.process_time()
        evaluate(lm, out=folder, config=cfg, progress=progress)
        print(f"base model evaluated ({time.process_time() - t0:.0f} CPU-s) -> {folder}")
    return folder / "eval.json"


def row_payload(result) -> dict[str, dict[str, Any]]:
    """Per changed row: change, 95% CI, before, after, pairs, the concept it speaks for and
    each pair's change (``pair_changes``, log-odds rows; the level CIs of predict validation)."""
    rows, pairs = {}, pair_changes(result)
    for name, c in result.changes.items():
        m = result.model.metrics.get(name)
        rows[name] = {
            "change": c.delta.value,
            "ci_low": c.delta.low,
            "ci_high": c.delta.high,
            "excludes_zero": bool(c.delta.low > 0 or c.delta.high < 0),
            "before": c.before.value,
            "after": c.after.value,
            "n_paired": c.n_paired,
            "label": c.label,
            "concept": m.concept if m is not None else None,
            "pair_changes": pairs.get(name),
        }
    return rows


def pair_changes(result) -> dict[str, dict[str, float]]:
    """Per log-odds row: each pair's change (after - before, nats/token) by pair id."""
    out: dict[str, dict[str, float]] = {}
    if result.before is None:
        return out
    for name, m in result.model.metrics.items():
        b = result.before.metrics.get(name)
        if m.kind != "logodds" or b is None:
            continue
        out[name] = {
            u: float(np.mean(v) - np.mean(b.units[u])) for u, v in m.units.items() if u in b.units
        }
    return out


def measure(lm, adapter: Path, base: Path, cfg: EvalConfig, progress: bool):
    t0, c0 = time.perf_counter(), time.process_time()
    result = evaluate(lm, adapter=adapter, baseline=base, config=cfg, progress=progress)
    return row_payload(result), time.perf_counter() - t0, time.process_time() - c0


def run_one(spec: str, lm: LoadedModel, args, cfg: EvalConfig, out: Path) -> dict | None:
    """Train (unless the adapter exists) and measure one data set; None when skipped."""
    folder = out / safe_name(spec)
    path = folder / BEHAVIOUR_JSON
    adapter = folder / "adapter"
    remeasure = args.rows is not None
    if path.is_file() and not remeasure:
        print(f"{spec}: {path} exists, skipped")
        return None
    have_adapter = (adapter / "adapter_config.json").is_file()
    payload: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if not have_adapter:
        ds = build_dataset(spec, args.train_examples, args.seed, args.data_root)
        t0, c0 = time.perf_counter(), time.process_time()
        run = finetune(
            lm, ds, out=adapter, config=recipe(*_recipe_args(args)), progress=False, overwrite=True
        )
        payload |= {
            "dataset": display_name(spec),
            "n_train": len(ds),
            "train_records_sha256": ds.records_sha256,
            "final_loss": run.metrics.get("final_loss"),
            "train_seconds": time.perf_counter() - t0,
            "train_cpu_seconds": time.process_time() - c0,
        }
        del run
    base = base_eval(lm, cfg, out, progress=not args.quiet)
    rows, secs, cpu = measure(lm, adapter, base, cfg, progress=not args.quiet)
    payload |= {
        "dataset": display_name(spec),
        "recipe": recipe(*_recipe_args(args)).to_dict(),
        "eval_config": {k: v for k, v in cfg.to_dict().items() if k != "data_root"},
        "rows": {**payload.get("rows", {}), **rows},
        "eval_seconds": secs,
        "eval_cpu_seconds": cpu,
        "model": args.model,
        "machine": machine(),
    }
    write_json(path, payload)
    print(f"{spec}: " + ", ".join(f"{k}={_cell(v)}" for k, v in rows.items()), flush=True)
    return payload


def _recipe_args(args) -> tuple[int, float, int, int, int]:
    return args.steps, args.lr, args.rank, args.batch, args.seed


def _cell(r: dict[str, Any]) -> str:
    star = "*" if r["excludes_zero"] else ""
    return f"{r['change']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]{star}"


def summary(out: Path, specs: Sequence[str]) -> dict[str, Any]:
    """Every ``behaviour.json`` of ``specs`` under ``out``: change per data set x row."""
    table: dict[str, dict[str, Any]] = {}
    for spec in specs:
        path = out / safe_name(spec) / BEHAVIOUR_JSON
        if path.is_file():
            table[spec] = json.loads(path.read_text())["rows"]
    rows = sorted({r for v in table.values() for r in v})
    return {"datasets": list(table), "rows": rows, "table": table}


def markdown(s: dict[str, Any]) -> str:
    """The summary as a markdown table (change [95% CI]; * = CI excludes 0), nats/token."""
    head = "| data set | " + " | ".join(r.removeprefix("logodds:") for r in s["rows"]) + " |"
    lines = [head, "|" + "---|" * (len(s["rows"]) + 1)]
    for ds, rows in s["table"].items():
        cells = [_cell(rows[r]) if r in rows else "" for r in s["rows"]]
        lines.append(f"| {ds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--only", help="one data set (overrides --datasets)")
    ap.add_argument(
        "--rows",
        help="log-odds sets to measure (default: evaluate's defaults); finished data sets are "
        "re-measured on these rows on their existing adapters",
    )
    ap.add_argument("--pairs", type=int, default=None, help="pairs per set (default: all)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-examples", type=int, default=200)
    ap.add_argument("--out", default=str(RESULTS / "behaviour_runs"))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None, lm: LoadedModel | None = None) -> dict[str, Any]:
    """Run (``lm``: a loaded model instead of ``--model``); returns the summary."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [args.only] if args.only else [s for s in args.datasets.split(",") if s]
    for spec in specs:  # a bad name fails before any work
        if spec.startswith("mix:"):
            parse_mix(spec)
        elif not _known(spec):
            raise GeomsafeError(f"unknown data set {spec!r} (known: {', '.join(DATASETS)})")
    rows = [r for r in (args.rows or ",".join(DEFAULT_SETS)).split(",") if r]
    cfg = eval_config(rows, args.pairs, args.seed, args.data_root)
    cfg.validate()
    out = Path(args.out)
    lm = lm if lm is not None else load(args.model)
    t0 = time.process_time()
    for spec in specs:
        run_one(spec, lm, args, cfg, out)
    s = summary(out, list(dict.fromkeys([*specs, *DATASETS])))
    cmd = sys.argv[1:] if argv is None else list(argv)
    s["command"] = "python experiments/behaviour_runs.py " + " ".join(cmd)
    s["cpu_seconds_this_call"] = time.process_time() - t0
    write_json(out / "summary.json", s)
    text = markdown(s)
    atomic_write(out / "summary.md", lambda p: Path(p).write_text(text, encoding="utf-8"))
    print(text)
    return s


if __name__ == "__main__":
    try:
        main()
    except GeomsafeError as exc:
        raise SystemExit(f"error: {exc}") from None
