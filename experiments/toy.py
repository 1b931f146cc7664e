"""The full (non-quick) toy experiments: superposition results, entanglement, guard effect.

    python experiments/toy.py [--seed 0] [--out DIR] [--reps 5]

Runs ``geomsafe.toy.toy(out, quick=False)`` (figures + ``toy.json`` in ``--out``), prints the
headline numbers, then times the fine-tuning step with and without the toy orthogonal guard on
the same shapes, interleaved ``--reps`` times (the in-run timing is a single pair and noisy).
Writes everything to ``$GEOMSAFE_RESULTS/toy.json`` (see ``lib.common.RESULTS``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from geomsafe.toy import ToyModel, ToyOrthogonalGuard, ToyTrainConfig, toy, train
from geomsafe.toy.entangle import protected_features
from geomsafe.toy.train import importance_vector
from lib.common import RESULTS, machine, write_json


def guard_overhead(copies: int, m: int, n: int, protect: int, steps: int, reps: int) -> dict:
    """Median seconds per fine-tuning step with and without the guard (same shapes and data)."""
    gen = torch.Generator().manual_seed(0)
    W0 = torch.randn(copies, m, n, generator=gen) * 0.4
    b0 = torch.full((copies, n), -0.1)
    target = torch.arange(copies) % n
    protected = protected_features(W0, target, torch.ones(copies, n, dtype=torch.bool), protect)
    guard = ToyOrthogonalGuard(W0, protected)
    config = ToyTrainConfig(steps, 1024, 2e-3, seed=1)
    importance, probability = importance_vector(n), torch.tensor([[0.1]])
    times: dict[str, list[float]] = {"free": [], "guarded": []}
    for _ in range(reps):
        for name, hook in (("free", None), ("guarded", guard)):
            model = ToyModel.from_weights(W0, b0)
            model.freeze_readout()
            start = time.perf_counter()
            train(model, importance, probability, config, after_step=hook)
            times[name].append((time.perf_counter() - start) / steps)
    free, guarded = statistics.median(times["free"]), statistics.median(times["guarded"])
    return {
        "copies": copies,
        "steps": steps,
        "reps": reps,
        "free_s_per_step": free,
        "guarded_s_per_step": guarded,
        "overhead_ratio": guarded / free,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "toy"))
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    result = toy(args.out, seed=args.seed, quick=False, progress=True, overwrite=True)
    numbers = result.headline()
    c = result.entangle.config
    copies = len(result.entangle.targets)
    overhead = guard_overhead(copies, c.n_hidden, c.n_features, c.protect, 200, args.reps)
    print(f"toy experiments, seed {args.seed}, full run; figures and toy.json in {args.out}")
    for key, value in numbers.items():
        print(f"  {key:40s} {value:.4g}")
    print(
        f"  guard step timing ({copies} copies, {args.reps} interleaved reps of 200 steps): "
        f"{overhead['free_s_per_step'] * 1e3:.2f} ms free, "
        f"{overhead['guarded_s_per_step'] * 1e3:.2f} ms guarded, "
        f"ratio {overhead['overhead_ratio']:.3f}"
    )
    payload = {
        "machine": machine(),
        "seed": args.seed,
        "headline": numbers,
        "entanglement": result.entangle.summary(),
        "timing_s": result.timing,
        "guard_step_timing": overhead,
    }
    write_json(RESULTS / "toy.json", payload)


if __name__ == "__main__":
    main()
