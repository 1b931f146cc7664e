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
  (:func:`lib.train_sets.mix_records`);
- ``NAME=FILE.jsonl``: any file ``geomsafe.datasets`` reads.

Each data set is sampled to ``--train-examples`` (seeded), fine-tuned with
:func:`lib.behaviour.recipe` (``--guard none``) into ``<out>/<name>/adapter`` and evaluated
likelihood-only (``evaluate``'s log-odds rows, all pairs unless ``--pairs``): the change tuned
minus base of every row with its paired bootstrap 95% CI goes to
``<out>/<name>/behaviour.json``. The base model's rows are the same for every data set: computed
once and cached as an ``eval.json`` in ``<out>/_base/<key>/`` (key: sha256 of the model's
provenance, the evaluation config and the pair sets' hashes) and passed to ``evaluate`` as its
baseline. A data set whose ``behaviour.json`` exists is skipped (resumable) unless ``--rows`` is
given: then the given rows are (re-)measured on its existing adapter, without training, and
merged into its ``behaviour.json`` (data sets without a run are trained and measured on those
rows). ``<out>/summary.json`` and ``summary.md``: change per data set x row with CIs. ``<out>``
defaults to ``$GEOMSAFE_RESULTS/behaviour_runs``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from geomsafe.artefacts import atomic_write
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate import EvalConfig, evaluate
from geomsafe.evaluate.pairsets import DEFAULT_SETS
from geomsafe.models import LoadedModel, load
from geomsafe.train import finetune
from lib.behaviour import base_eval, eval_config, recipe, row_payload
from lib.common import RESULTS, machine, write_json
from lib.train_sets import (
    BEHAVIOUR_JSON,
    DATASETS,
    build_dataset,
    display_name,
    known,
    parse_mix,
    safe_name,
)


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
        elif not known(spec):
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
