"""`geomsafe evaluate` at its default sizes on the default model: wall time and the table.

    python experiments/evaluate_default.py [--model default] [--adapter DIR] [--atlas DIR]
        [--threads N] [--out DIR]

The wall time includes the model load. The machine's load average is printed before and after
the run: on a 2-core machine other busy processes slow torch's threads badly (``--threads 1``
is then much faster than 2), so a timing is only meaningful with the load next to it.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from geomsafe.cli.evaluate import print_eval
from geomsafe.evaluate import EvalConfig, evaluate
from lib.common import RESULTS, machine, write_json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--adapter")
    ap.add_argument("--atlas")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default=str(RESULTS / "eval-default"))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--tag", default="evaluate_default", help="name of the results JSON")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    result = evaluate(
        args.model,
        adapter=args.adapter,
        atlas=args.atlas,
        out=args.out,
        overwrite=True,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - t0
    load_after = os.getloadavg()
    print_eval(result)
    runs = [r for r in (result.before, result.model) if r is not None]
    for r in runs:
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in r.seconds.items())
        print(f"{r.label}: {stages}")
    print(f"\nwall time {seconds:.1f} s (model load included), torch threads "
          f"{torch.get_num_threads()}, load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")  # fmt: skip
    cmd = "python experiments/evaluate_default.py --model " + args.model
    for flag in ("adapter", "atlas", "threads"):
        if getattr(args, flag):
            cmd += f" --{flag} {getattr(args, flag)}"
    write_json(
        RESULTS / f"{args.tag}.json",
        {
            "command": cmd + f" --out {args.out}",
            "seconds": seconds,
            "stage_seconds": {r.label: r.seconds for r in runs},
            "load_average": {"before": load_before, "after": load_after},
            "config": EvalConfig().to_dict(),
            "metrics": {
                r.label: {
                    k: {"value": m.ci.value, "ci": [m.ci.low, m.ci.high], "n": m.ci.n}
                    for k, m in r.metrics.items()
                }
                for r in runs
            },
            "changes": {k: c.to_dict() for k, c in result.changes.items()},
            "warnings": result.warnings,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
