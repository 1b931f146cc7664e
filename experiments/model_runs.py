"""The main commands end to end on one model, each timed alone: wall time and peak memory.

    python experiments/model_runs.py --model qwen-coder [--out DIR] [--steps 20] [--lr 1e-3]
        [--pairs 50] [--threads 2] [--max-pairs 64] [--layers SPEC] [--max-examples 48]
        [--train FILE] [--train-examples 200] [--guard projection] [--only STEP,...]

Runs, one after another as ``geomsafe`` subprocesses (so each step's peak RSS is its own,
read with ``os.wait4``):

1. ``info``;
2. ``audit`` (``--max-pairs`` pairs per concept, ``--layers``: all unless given) into
   ``<out>/audit``;
3. ``predict`` of the built-in ``task:code`` set (``--max-examples``) with that atlas;
4. a guarded ``finetune`` (``--guard`` on the atlas's harmful concepts ``--guard-concepts``)
   on the first ``--train-examples`` of ``--train`` (default: emergent-misalignment
   ``jailbroken.jsonl``), ``--steps`` steps at ``--lr``;
5. ``evaluate --likelihood-only`` of that adapter against the base model: the held-out
   log-odds rows (``--pairs`` pairs each) before vs after.

``<out>/model_runs.json``: per step the command, exit code, wall seconds and peak RSS, plus the
machine; ``<out>/model_runs.md``: the table. A step whose exit code is not 0 stops the run
(later steps need its output). ``--only`` re-runs chosen steps on the outputs already in
``<out>``. ``<out>`` defaults to ``$GEOMSAFE_RESULTS/model_runs/<model>``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geomsafe.artefacts import atomic_write_text
from lib.common import EM_DATA, GEOMSAFE_CLI, RESULTS, last_line, machine, timed, write_json

JAILBROKEN = EM_DATA / "jailbroken.jsonl"
STEPS = ("info", "audit", "predict", "finetune", "evaluate")


def commands(args: argparse.Namespace, out: Path) -> dict[str, list[str]]:
    """The ``geomsafe`` argument list of every step."""
    model = ["--model", args.model]
    threads = ["--threads", str(args.threads)] if args.threads else []
    layers = ["--layers", args.layers] if args.layers else []
    audit = out / "audit"
    return {
        "info": ["info", *model],
        "audit": [
            *("audit", *model, "--out", str(audit), "--overwrite"),
            *("--max-pairs", str(args.max_pairs), *layers, *threads),
        ],
        "predict": [
            *("predict", *model, "--data", "task:code", "--atlas", str(audit)),
            *("--max-examples", str(args.max_examples), "--out", str(out / "predict")),
            *("--overwrite", *threads),
        ],
        "finetune": [
            *("finetune", *model, "--data", str(args.train), "--atlas", str(audit)),
            *("--guard", args.guard, "--guard-concepts", args.guard_concepts),
            *("--max-steps", str(args.steps), "--lr", str(args.lr)),
            *("--max-examples", str(args.train_examples), "--max-length", "256", "--truncate"),
            *("--out", str(out / "finetune"), "--overwrite", "--no-progress"),
        ],
        "evaluate": [
            *("evaluate", *model, "--adapter", str(out / "finetune"), "--likelihood-only"),
            *("--logodds-pairs", str(args.pairs), "--out", str(out / "evaluate")),
            *("--overwrite", "--no-progress", *threads),
        ],
    }


def table(steps: dict[str, dict[str, Any]]) -> str:
    rows = ["| step | exit | wall | peak RSS | CPU | command |", "|---|---|---|---|---|---|"]
    for name, s in steps.items():
        rows.append(
            f"| {name} | {s['rc']} | {s['wall_s'] / 60:.1f} min | {s['peak_rss_gb']:.2f} GB "
            f"| {s['cpu_s'] / 60:.1f} min | `{s['command']}` |"
        )
    return "\n".join(rows) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=",".join(STEPS), help="steps to run, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-pairs", type=int, default=64)
    ap.add_argument("--layers", default=None)
    ap.add_argument("--max-examples", type=int, default=48)
    ap.add_argument("--train", default=str(JAILBROKEN))
    ap.add_argument("--train-examples", type=int, default=200)
    ap.add_argument("--guard", default="projection")
    ap.add_argument("--guard-concepts", default="toxicity,dangerous_advice,deception")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--pairs", type=int, default=50)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    if unknown := [s for s in only if s not in STEPS]:
        raise SystemExit(f"error: unknown step {unknown[0]!r} (steps: {', '.join(STEPS)})")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(args.model).stem)
    out = Path(args.out) if args.out else RESULTS / "model_runs" / safe
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model_runs.json"
    steps = json.loads(path.read_text())["steps"] if path.is_file() else {}
    exe = [GEOMSAFE_CLI]
    for name, argv_ in commands(args, out).items():
        if name not in only:
            continue
        print(f"[{name}] geomsafe {' '.join(argv_)}", flush=True)
        log = out / f"{name}.log"
        got = timed([*exe, *argv_], log)
        steps[name] = {**got, "command": "geomsafe " + " ".join(argv_), "last": last_line(log)}
        print(
            f"[{name}] exit {got['rc']}, {got['wall_s']:.0f} s, {got['peak_rss_gb']:.2f} GB: "
            f"{steps[name]['last'][:160]}",
            flush=True,
        )
        payload = {"model": args.model, "steps": steps, "machine": machine()}
        write_json(path, payload)
        atomic_write_text(out / "model_runs.md", table(steps))
        if got["rc"] != 0:
            break
    return {"model": args.model, "steps": steps}


if __name__ == "__main__":
    main()
