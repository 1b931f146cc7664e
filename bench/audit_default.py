"""The geometric audit on a real model, with the issue's checks printed.

    python bench/audit_default.py [--model default] [--max-pairs 64] [--out DIR]

Checks: held-out AUROC >= 0.9 at the best layer for every built-in concept; the
label-shuffled control's overlap has p > 0.05 (over the layer band, and at its best layer);
toxicity vs hate_bias overlaps above its null (the overlap restricted to hate_bias, with the
permutation null of toxicity's labels, at toxicity's best layer and over the band).
"""

from __future__ import annotations

import argparse
import time

from _common import RESULTS, machine, write_json
from geomsafe.audit import audit
from geomsafe.cli.audit import print_audit
from geomsafe.geometry.overlap import overlap


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-pairs", type=int, default=64)
    ap.add_argument("--out", default=str(RESULTS / "audit-default"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = audit(args.model, out=args.out, max_pairs=args.max_pairs)
    seconds = time.perf_counter() - t0
    print_audit(result)
    rep, atlas = result.report, result.atlas
    print("\nheld-out AUROC at the best layer:")
    aurocs = {n: atlas.stats[n]["best_auroc"] for n in atlas.names() if atlas.kinds[n] != "control"}
    for n, v in sorted(aurocs.items(), key=lambda kv: kv[1]):
        print(f"  {n:24s} {v:.3f} (layer {atlas.best_layer(n)})")
    control = next(r for r in rep["targets"] if r["target"] == "random_labels")
    tox = next(r for r in rep["harmful_neighbours"] if r["target"] == "toxicity")
    acts = result.extraction.activations
    pair = {
        "best_layer": overlap(
            atlas, acts, "toxicity", [atlas.best_layer("toxicity")], ["hate_bias"]
        ),
        "band": overlap(atlas, acts, "toxicity", rep["band"], ["hate_bias"]),
    }
    checks = {
        "min AUROC >= 0.9": min(aurocs.values()) >= 0.9,
        "control p > 0.05 (band)": control["band"]["p_value"] > 0.05,
        "control p > 0.05 (best layer)": control["p_value"] > 0.05,
        "toxicity~hate_bias above null, best layer (p < 0.05)": pair["best_layer"].p_value < 0.05,
        "toxicity~hate_bias above null, band (p < 0.05)": pair["band"].p_value < 0.05,
    }
    print(
        f"\ncontrol (random labels): overlap {control['score']:.3f} p={control['p_value']:.3f} "
        f"(layer {control['layer']}); band {control['band']['score']:.3f} "
        f"p={control['band']['p_value']:.3f}"
    )
    print(f"toxicity nearest harmful: {tox['harmful']} cos {tox['score']:.3f}")
    for where, r in pair.items():
        print(
            f"toxicity~hate_bias ({where}, layers {r.layers[0]}..{r.layers[-1]}): "
            f"{r.score:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}], null q95 {r.null_q95:.3f}, "
            f"p={r.p_value:.3f}"
        )
    for k, ok in checks.items():
        print(f"  [{'x' if ok else ' '}] {k}")
    print(f"\naudit wall time: {seconds:.1f} s (includes model load)")
    write_json(
        RESULTS / "audit_default.json",
        {
            "model": args.model,
            "seconds": seconds,
            "aurocs": aurocs,
            "checks": checks,
            "control": control,
            "toxicity": tox,
            "toxicity_hate_bias": {k: r.to_dict() for k, r in pair.items()},
            "targets": [
                {
                    k: r[k]
                    for k in (
                        "target",
                        "harmful",
                        "score",
                        "ci_low",
                        "ci_high",
                        "p_value",
                        "null_q95",
                        "layer",
                    )
                }
                for r in rep["targets"]
            ],
            "machine": machine(),
            "command": f"python bench/audit_default.py --model {args.model} "
            f"--max-pairs {args.max_pairs} --out {args.out}",
        },
    )


if __name__ == "__main__":
    main()
