"""Capture throughput vs a bare backbone forward on the same batches, same run.

    python experiments/capture.py [--model default] [--examples 64] [--reps 5]

Prints tokens/s for both and their ratio (capture / bare; goal >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from geomsafe.capture import backbone, capture, make_batches
from geomsafe.formatting import Example, encode_all
from geomsafe.models import load
from lib.common import RESULTS, bare_forward, machine, sample_examples, write_json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "capture.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load(args.model)
    examples = sample_examples(args.examples)
    encoded = encode_all(lm.tokenizer, [Example(p, r) for p, r in examples])
    batches = list(make_batches(encoded, args.batch_size, lm.tokenizer.pad_token_id, "right"))
    n_tokens = sum(e.length for e in encoded)
    net = backbone(lm.model)

    def bare() -> None:
        bare_forward(net, batches)

    def hooked() -> None:
        capture(lm, examples, tokens="all", batch_size=args.batch_size, progress=False)

    bare(), hooked()  # warm-up
    t_bare, t_cap = [], []
    for _ in range(args.reps):  # interleaved so drift hits both equally
        t0 = time.perf_counter()
        bare()
        t_bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        hooked()
        t_cap.append(time.perf_counter() - t0)
    bare_tps = n_tokens / statistics.median(t_bare)
    cap_tps = n_tokens / statistics.median(t_cap)
    ratio = cap_tps / bare_tps
    print(f"model {args.model}: {lm.n_layers} layers, {n_tokens} tokens, {len(batches)} batches")
    print(f"bare backbone forward : {bare_tps:8.0f} tokens/s (median of {args.reps})")
    print(f"capture, all layers   : {cap_tps:8.0f} tokens/s")
    print(f"ratio capture/bare    : {ratio:.3f}  (goal >= 0.95)")
    write_json(
        args.out,
        {
            "model": args.model,
            "layers": lm.n_layers,
            "tokens": n_tokens,
            "bare_tokens_per_s": bare_tps,
            "capture_tokens_per_s": cap_tps,
            "ratio": ratio,
            "bare_s": t_bare,
            "capture_s": t_cap,
            "machine": machine(),
            "command": "python experiments/capture.py "
            f"--model {args.model} --examples {args.examples}"
            f" --batch-size {args.batch_size} --reps {args.reps}",
        },
    )


if __name__ == "__main__":
    main()
