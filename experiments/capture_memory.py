"""Peak memory of projecting many examples: pooled activations kept vs running projections.

    python experiments/capture_memory.py [--sizes 5000,10000,20000] [--layers 16] [--width 256]

For each size N, two fresh processes project N short examples on 16 directions (one per
layer) of a tiny random-init Llama (``--layers`` x ``--width``, wide enough that the pooled
activations dominate): ``before`` runs what :func:`geomsafe.projection.project` did up to
this change (``capture`` keeps the ``[N, L, D]`` pooled means, then dots them), ``after``
runs ``project`` as it is now (:func:`geomsafe.capture.capture_projections`: ``[N, K]``
running projections). Each reports its peak RSS growth over the RSS after loading the model
and tokenising (``ru_maxrss``), and the largest difference between the two results.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

from lib.common import RESULTS, machine, write_json


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, n: int, layers: int, width: int) -> dict:
    from geomsafe.atlas import FeatureAtlas
    from geomsafe.capture import capture
    from geomsafe.formatting import Example, encode_all
    from geomsafe.projection import project
    from geomsafe.testing import tiny_model

    torch.set_num_threads(1)
    lm = tiny_model("llama", n_layers=layers, width=width)
    g = torch.Generator().manual_seed(0)
    names = [f"c{i}" for i in range(layers)]
    dirs = {
        name: torch.nn.functional.normalize(torch.randn(layers, width, generator=g), dim=-1)
        for name in names
    }
    stats = {name: {"best_layer": i} for i, name in enumerate(names)}
    atlas = FeatureAtlas(list(range(layers)), dirs, dict.fromkeys(names, "harmful"), stats, {})
    examples = [Example(f"q{i % 97}", f"a{i % 89}") for i in range(n)]
    encode_all(lm.tokenizer, examples[:64], 512)  # warm up the tokenizer and the model
    project(lm, examples[:64], atlas, batch_size=64)
    base = _rss_mib()
    if mode == "before":
        acts = capture(lm, examples, layers=list(range(layers)), batch_size=64, progress=False)
        out = {name: acts.layer(i) @ atlas.direction(name, i) for i, name in enumerate(names)}
    else:
        out = project(lm, examples, atlas, batch_size=64)
    values = torch.stack([out[name] for name in names])
    return {"mode": mode, "n": n, "rss_growth_mib": _rss_mib() - base, "values": values.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5000,10000,20000")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS / "capture_memory.json"))
    args = ap.parse_args()
    if args.child:
        mode, n = args.child.split(":")
        print(json.dumps(child(mode, int(n), args.layers, args.width)))
        return
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        got = {}
        for mode in ("before", "after"):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                f"{mode}:{n}",
                "--layers",
                str(args.layers),
                "--width",
                str(args.width),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            got[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        diff = torch.tensor(got["before"]["values"]) - torch.tensor(got["after"]["values"])
        pooled_mib = n * args.layers * args.width * 4 / 2**20
        row = {
            "n": n,
            "pooled_tensor_mib": pooled_mib,
            "before_rss_growth_mib": got["before"]["rss_growth_mib"],
            "after_rss_growth_mib": got["after"]["rss_growth_mib"],
            "max_abs_diff": float(diff.abs().max()),
        }
        rows.append(row)
        print(
            f"N={n:6d}  [N,L,D] = {pooled_mib:7.1f} MiB  peak RSS growth: before "
            f"{row['before_rss_growth_mib']:7.1f} MiB, after {row['after_rss_growth_mib']:7.1f}"
            f" MiB  max |diff| {row['max_abs_diff']:.1e}",
            flush=True,
        )
    write_json(
        args.out, {"layers": args.layers, "width": args.width, "rows": rows, "machine": machine()}
    )


if __name__ == "__main__":
    main()
