"""First (GGUF dequantise) vs second (safetensors cache) load of a model, same run.

    python experiments/model_load.py [--model default]

Uses a fresh temporary cache so the first load really is cold. Goal: second <= first / 4.
Also checks that both loads give the same logits.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from lib.common import RESULTS, machine, write_json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default=str(RESULTS / "model_load.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GEOMSAFE_CACHE"] = cache
        from geomsafe.models import load

        t0 = time.perf_counter()
        first = load(args.model)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = load(args.model)
        t_second = time.perf_counter() - t0
    ids = torch.tensor([[1, 504, 3255, 314, 260, 3575, 282, 4649, 47]])
    with torch.no_grad():
        diff = (first.model(ids).logits - second.model(ids).logits).abs().max().item()
    ratio = t_second / t_first
    print(f"first load (dequantise GGUF + write cache): {t_first:6.2f} s")
    print(f"second load (safetensors cache)           : {t_second:6.2f} s")
    print(f"ratio second/first: {ratio:.3f} (goal <= 0.25); max |logit diff| = {diff:.2e}")
    assert second.from_cache and not first.from_cache
    write_json(
        args.out,
        {
            "model": args.model,
            "first_s": t_first,
            "second_s": t_second,
            "ratio": ratio,
            "max_logit_diff": diff,
            "machine": machine(),
            "command": f"python experiments/model_load.py --model {args.model}",
        },
    )


if __name__ == "__main__":
    main()
