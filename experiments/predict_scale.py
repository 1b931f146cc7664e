"""Does `predict` grow linearly in time and stay bounded in memory with the data set's size?

    python experiments/predict_scale.py [--model default] [--data FILE] [--sizes 1500,3000,6000]
        [--atlas DIR] [--threads 2] [--generate] [--resume] [--out DIR]

Each size N is one ``geomsafe predict --max-examples N`` subprocess on ``--data`` (default: the
full emergent-misalignment ``insecure.jsonl``, 6,000 examples), one after another, timed with
its own peak RSS (:func:`lib.common.timed`). ``--no-generate`` unless ``--generate``: the default
risk (gradient alignment) and the per-example prompt-anchored scores, without greedy own
responses (which cost one generation per example). The atlas is made once beforehand by
``geomsafe audit --no-heads`` (timed apart) unless ``--atlas`` is given, so no size pays for it.

Per size: wall and CPU seconds, peak RSS, and the time of the model-dependent part
(``provenance.seconds`` of ``risk.json``, the ``predict`` call without the interpreter start);
then the least-squares line ``seconds = a + b N`` over the sizes with its R² and the seconds per
1,000 examples of each size, which are about equal when the time is linear. Results:
``<out>/predict_scale.json`` and ``.md`` (``<out>``: ``$GEOMSAFE_RESULTS/predict_scale``).
``--resume`` keeps the sizes already in ``<out>/predict_scale.json`` when it was made with the
same model, data, atlas and generation setting, and runs only the others (add a large size to a
measured small-size series without re-running it; the record keeps each run's own command).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geomsafe.artefacts import atomic_write_text
from lib.common import EM_DATA, GEOMSAFE_CLI, RESULTS, last_line, machine, timed, write_json

INSECURE = EM_DATA / "insecure.jsonl"


def linear_fit(sizes: Sequence[int], seconds: Sequence[float]) -> dict[str, float]:
    """``seconds = intercept + slope * size`` by least squares, with R²."""
    x, y = np.asarray(sizes, float), np.asarray(seconds, float)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else 1.0
    return {"intercept_s": float(intercept), "s_per_1000": float(slope * 1000), "r2": r2}


def _earlier_runs(record: Path, setting: dict[str, Any], sizes: Sequence[int]) -> dict[str, Any]:
    """The runs of ``sizes`` in an earlier record with the same setting (none if it differs)."""
    if not record.exists():
        return {}
    old = json.loads(record.read_text())
    # records from before ``--resume`` hold no atlas/generate keys: read them from the commands
    for key, value in setting.items():
        if key in old and old[key] != value:
            print(f"--resume: the record's {key} differs; measuring every size", flush=True)
            return {}
    kept = {str(n): old["runs"][str(n)] for n in sizes if str(n) in old.get("runs", {})}
    same = all(
        f"--atlas {setting['atlas']} " in r["command"]
        and ("--no-generate" in r["command"]) != setting["generate"]
        for r in kept.values()
    )
    if not same:
        print("--resume: the record's atlas or generation differs; measuring all", flush=True)
        return {}
    return kept


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(INSECURE))
    ap.add_argument("--sizes", default="1500,3000,6000")
    ap.add_argument("--atlas", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--generate", action="store_true")
    ap.add_argument("--resume", action="store_true", help="keep sizes already measured in --out")
    ap.add_argument("--out", default=str(RESULTS / "predict_scale"))
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if len(sizes) < 2 or min(sizes) < 1:
        raise SystemExit("error: --sizes needs at least two positive sizes")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exe = GEOMSAFE_CLI
    threads = ["--threads", str(args.threads)]
    atlas, runs = args.atlas, {}
    if atlas is None:
        atlas = str(out / "audit")
        cmd = ["audit", "--model", args.model, "--out", atlas, "--overwrite", "--no-heads"]
        runs["audit"] = {**timed([exe, *cmd, *threads], out / "audit.log"), "command": cmd}
        if runs["audit"]["rc"] != 0:
            raise SystemExit(f"error: the audit failed: {last_line(out / 'audit.log')}")
    setting = {"model": args.model, "data": args.data, "atlas": atlas, "generate": args.generate}
    if args.resume:
        runs |= _earlier_runs(out / "predict_scale.json", setting, sizes)
    for n in sizes:
        if str(n) in runs:
            print(f"[{n}] kept from the earlier record", flush=True)
            continue
        folder = out / f"predict-{n}"
        cmd = [
            *("predict", "--model", args.model, "--data", args.data, "--atlas", atlas),
            *("--max-examples", str(n), "--out", str(folder), "--overwrite", *threads),
            *([] if args.generate else ["--no-generate"]),
        ]
        print(f"[{n}] geomsafe {' '.join(cmd)}", flush=True)
        got = timed([exe, *cmd], out / f"predict-{n}.log")
        if got["rc"] != 0:
            raise SystemExit(f"error: predict {n} failed: {last_line(out / f'predict-{n}.log')}")
        risk = json.loads((folder / "risk.json").read_text())
        got |= {
            "n_examples": risk["n_examples"],
            "predict_s": round(risk["provenance"]["seconds"], 1),
            "overall_risk": risk["overall_risk"],
            "command": "geomsafe " + " ".join(cmd),
        }
        runs[str(n)] = got
        print(
            f"[{n}] {got['wall_s']:.0f} s wall, predict {got['predict_s']:.0f} s, "
            f"{got['peak_rss_gb']:.2f} GB",
            flush=True,
        )
    done = [runs[str(n)] for n in sizes]
    fit = linear_fit([r["n_examples"] for r in done], [r["predict_s"] for r in done])
    per_1000 = {str(r["n_examples"]): r["predict_s"] / r["n_examples"] * 1000 for r in done}
    payload = {**setting, "runs": runs, "fit": fit}
    payload |= {"s_per_1000": per_1000, "machine": machine()}
    write_json(out / "predict_scale.json", payload)
    lines = ["| examples | wall | predict | s / 1,000 | peak RSS |", "|---|---|---|---|---|"]
    for r in done:
        lines.append(
            f"| {r['n_examples']} | {r['wall_s']:.0f} s | {r['predict_s']:.0f} s "
            f"| {per_1000[str(r['n_examples'])]:.0f} | {r['peak_rss_gb']:.2f} GB |"
        )
    lines.append(
        f"\nfit: {fit['intercept_s']:.1f} s + {fit['s_per_1000']:.1f} s per 1,000 examples, "
        f"R² {fit['r2']:.4f}"
    )
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "predict_scale.md", text)
    print(text)
    return payload


if __name__ == "__main__":
    main()
