"""The geometric audit on a real model, with the issue's checks and its time by phase printed.

    python experiments/audit_default.py [--model default] [--max-pairs 64] [--out DIR] [--no-bare]

Checks: held-out AUROC >= 0.9 at the best layer for every built-in concept; the
label-shuffled control's overlap has p > 0.05 (over the layer band, and at its best layer);
toxicity vs hate_bias overlaps above its null (the overlap restricted to hate_bias, with the
permutation null of toxicity's labels, at toxicity's best layer and over the band).

Time: model load, then the audit's phases (``report["phases"]``) with their shares, and the
time of a bare backbone forward (no hooks, no LM head, length-sorted batches of the audit's
batch size) over the same examples' full token sequences, the yardstick for the extract phase;
the audit runs shared prompts once (``capture(share_prefix=True)``), so it computes fewer
tokens than that forward, and both token counts are printed.
"""

from __future__ import annotations

import argparse
import time

from geomsafe.audit import audit
from geomsafe.capture import backbone, make_batches
from geomsafe.cli.audit import print_audit
from geomsafe.concepts import builtin_names, load_for_direction
from geomsafe.formatting import Example, encode_all
from geomsafe.geometry.overlap import overlap
from geomsafe.models import LoadedModel, load
from geomsafe.prefix import plan_prefixes
from lib.common import RESULTS, bare_forward, machine, write_json

BATCH_SIZE = 16  # audit()'s default


def bare_forward_time(lm: LoadedModel, max_pairs: int) -> tuple[float, int, int]:
    """Seconds of a bare forward over the audit's distinct examples; their tokens; the tokens a
    shared-prefix capture computes."""
    sets = [load_for_direction(n).subset(max_pairs, 0) for n in builtin_names()]
    examples = dict.fromkeys(
        Example(p.prompt, r) for c in sets for p in c.pairs for r in (p.positive, p.negative)
    )
    encoded = encode_all(lm.tokenizer, list(examples), 512)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    batches = list(make_batches(encoded, BATCH_SIZE, pad, "right"))
    t0 = time.perf_counter()
    bare_forward(backbone(lm.model), batches)
    seconds = time.perf_counter() - t0
    return seconds, sum(e.length for e in encoded), plan_prefixes(encoded).tokens(encoded)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-pairs", type=int, default=64)
    ap.add_argument("--out", default=str(RESULTS / "audit-default"))
    ap.add_argument("--no-bare", action="store_true", help="skip the bare-forward yardstick")
    args = ap.parse_args()
    t0 = time.perf_counter()
    lm = load(args.model)
    load_s = time.perf_counter() - t0
    result = audit(
        lm, out=args.out, overwrite=True, max_pairs=args.max_pairs, batch_size=BATCH_SIZE
    )
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
            f"{r.score:.3f} [{r.ci.low:.3f}, {r.ci.high:.3f}], null q95 {r.null_q95:.3f}, "
            f"p={r.p_value:.3f}"
        )
    for k, ok in checks.items():
        print(f"  [{'x' if ok else ' '}] {k}")
    print(f"\naudit wall time: {seconds:.1f} s (includes model load)")
    phases = {"model load": load_s, **{k: v for k, v in rep["phases"].items() if k != "load"}}
    phases["report + write"] = seconds - sum(phases.values())
    for k, v in phases.items():
        print(f"  {k:16s} {v:7.1f} s  {v / seconds:6.1%}")
    bare = None
    if not args.no_bare:
        bare_s, n_full, n_shared = bare_forward_time(lm, args.max_pairs)
        bare = {"seconds": bare_s, "tokens": n_full, "tokens_computed": n_shared}
        print(
            f"bare backbone forward of the same examples: {bare_s:.1f} s ({n_full} tokens); "
            f"extract / bare = {phases['extract'] / bare_s:.3f}; "
            f"the shared capture computes {n_shared} tokens ({n_shared / n_full:.1%})"
        )
    write_json(
        RESULTS / "audit_default.json",
        {
            "model": args.model,
            "seconds": seconds,
            "phases": phases,
            "bare_forward": bare,
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
                        "ci",
                        "p_value",
                        "null_q95",
                        "layer",
                    )
                }
                for r in rep["targets"]
            ],
            "machine": machine(),
            "command": f"python experiments/audit_default.py --model {args.model} "
            f"--max-pairs {args.max_pairs} --out {args.out}",
        },
    )


if __name__ == "__main__":
    main()
