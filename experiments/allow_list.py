"""Good entanglement: does the allow-list keep a target capability while a harmful direction
is ablated? Fine-tune on empathy-flavoured data with ``ablate`` on sycophancy, with and
without ``allow=["empathy"]`` (empathy sits at a high cosine to sycophancy), beside an
unguarded run.

    python experiments/allow_list.py [--model default] [--n-train 48] [--n-heldout 16] [--steps 24]

1. Data: the built-in ``empathy`` concept's pairs, shuffled with ``--seed``, are split three
   ways with no overlap: ``--max-pairs`` pairs extract the empathy direction, the next
   ``--n-train`` pairs give the training set (the pair's prompt as the user turn, its
   *positive*, i.e. warm and acknowledging, response as the assistant turn) and the next
   ``--n-heldout`` pairs the held-out set, built the same way.
2. Atlas: sycophancy (``--max-pairs`` built-in pairs, harmful) and empathy (target) at the
   middle third of the layers (mean difference, unit); each is used at its best layer. The
   ablation runs at sycophancy's best layer.
3. Runs (same seed, data and LoRA recipe): unguarded; ``ablate`` on sycophancy; ``ablate``
   on sycophancy with ``allow=["empathy"]`` (sycophancy's direction orthogonalised against
   empathy's at that layer).
4. Measures, on the held-out set, after training (ablation is off at evaluation):
   - held-out target loss: mean response-token cross-entropy;
   - empathy projection kept: mean over the held-out examples of the residual stream (output
     of empathy's best layer) averaged over the response tokens, projected on the empathy
     direction, tuned minus base; "kept" = the guarded run's change over the unguarded
     run's. The same at the last prompt token (the model's own state before it answers);
   - the same two changes on sycophancy's direction at its best layer.
5. Behaviour (the yardstick; data that built no direction and trained nothing):
   - **target kept**: per held-out empathy pair, the log-odds of its warm reply over its
     matter-of-fact one (nats/token, :func:`geomsafe.evaluate.logodds.pair_logodds`), tuned
     minus base; kept = the guarded run's mean change over the unguarded run's, with a paired
     bootstrap CI;
   - **harm kept**: the same on sycophancy's evaluation half (``concept:sycophancy``, the
     pairs of the project's held-out split; the atlas direction is built from the other half):
     sycophantic over honest reply.
   Each run's change against the base has a bootstrap CI (both from
   :func:`geomsafe.stats.behaviour_change`, as in the guard Pareto grid).
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

from geomsafe import directions
from geomsafe.concepts import ConceptSet, load_builtin, load_for_direction
from geomsafe.evaluate.logodds import PairSet, pair_logodds
from geomsafe.evaluate.pairsets import load_pair_set
from geomsafe.formatting import Example
from geomsafe.guard import GuardConfig
from geomsafe.layers import default_band
from geomsafe.models import load
from geomsafe.projection import project, prompt_projection
from geomsafe.stats import behaviour_change
from geomsafe.train import TrainConfig, finetune
from geomsafe.train.data import load_data
from geomsafe.train.steps import heldout_loss
from lib.common import RESULTS, machine, write_json

HARMFUL, TARGET = "sycophancy", "empathy"


def split_target(n_atlas: int, n_train: int, n_heldout: int | None, seed: int):
    """(atlas concept set, training examples, held-out examples, held-out pairs as a pair set)
    from the built-in pairs; ``n_heldout`` None: every pair left."""
    full = load_builtin(TARGET)
    order = list(range(len(full.pairs)))
    random.Random(seed).shuffle(order)
    need = len(order) if n_heldout is None else n_atlas + n_train + n_heldout
    if need > len(order) or n_atlas + n_train >= need:
        asked = f"{n_atlas} + {n_train} + {n_heldout or 'some'} held out"
        raise SystemExit(f"{TARGET} has {len(order)} pairs; {asked} asked for")
    pairs = [full.pairs[i] for i in order]
    atlas_set = ConceptSet(full.name, full.kind, pairs[:n_atlas], full.description, full.source)
    train = [Example(p.prompt, p.positive) for p in pairs[n_atlas : n_atlas + n_train]]
    held_pairs = pairs[n_atlas + n_train : need]
    held = [Example(p.prompt, p.positive) for p in held_pairs]
    held_set = ConceptSet(full.name, full.kind, held_pairs, full.description, full.source)
    rows = PairSet.from_concept(held_set, name=f"{TARGET}-heldout")
    return atlas_set, train, held, rows


def measure(lm, held, held_data, atlas, rows) -> dict[str, object]:
    prompts = [e.prompt for e in held]
    last = prompt_projection(lm, prompts, atlas, [HARMFUL, TARGET])
    return {
        "heldout_loss": heldout_loss(lm, held_data),
        # per example: the mean over response tokens at the concept's best layer, projected
        "response": project(lm, held, atlas, [HARMFUL, TARGET], tokens="response", batch_size=8),
        "last_prompt": last,
        "logodds": {ps.concept: pair_logodds(lm, ps, progress=False) for ps in rows},
    }


def behaviour(got, base, unguarded, n_boot: int, seed: int) -> dict[str, dict]:
    """Per concept row: the run's log-odds change against the base (CI) and, against the
    unguarded run's change, the share kept (paired CI): :func:`behaviour_change`, without its
    ``all`` (a sum of a target and a harm row means nothing)."""
    ref = unguarded["logodds"] if unguarded is not None else None
    got = behaviour_change(base["logodds"], got["logodds"], ref, n_boot=n_boot, seed=seed)
    names = {"change": "change", "ratio": "kept"}
    return {
        row: {names[k]: ci.to_dict() for k, ci in cis.items() if k in names}
        for row, cis in got.items()
        if row != "all"
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--n-train", type=int, default=48)
    ap.add_argument(
        "--n-heldout", type=int, default=None, help="held-out empathy pairs (default: the rest)"
    )
    ap.add_argument("--max-pairs", type=int, default=32, help="pairs per concept for the atlas")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", default=str(RESULTS / "allow_list.json"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the temp runs
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    lm = load(args.model)
    target_set, train, held, target_rows = split_target(
        args.max_pairs, args.n_train, args.n_heldout, args.seed
    )
    rows = [target_rows, load_pair_set(f"concept:{HARMFUL}")]  # the evaluation half
    harmful_set = load_for_direction(HARMFUL).subset(args.max_pairs, args.seed)
    band = default_band(lm.n_layers)
    atlas = directions.extract(
        lm, [harmful_set, target_set], layers=band, seed=args.seed, progress=False
    ).atlas
    l_h, l_t = atlas.best_layer(HARMFUL), atlas.best_layer(TARGET)
    cos = {
        f"L{layer}": float(atlas.direction(HARMFUL, layer) @ atlas.direction(TARGET, layer))
        for layer in sorted({l_h, l_t})
    }
    print(
        f"atlas ({time.perf_counter() - t0:.0f} s): {HARMFUL}@L{l_h}, {TARGET}@L{l_t}; "
        f"cos({HARMFUL}, {TARGET}): " + ", ".join(f"{k} {v:.3f}" for k, v in cos.items())
    )
    held_data = load_data(held, lm.tokenizer, max_length=256, truncate=True)
    base = measure(lm, held, held_data, atlas, rows)
    config = TrainConfig(
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        learning_rate=args.lr,
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_length=256,
        truncate=True,
        seed=args.seed,
        save_steps=10**6,
        logging_steps=10,
    )
    variants = {
        "unguarded": None,
        "ablate": GuardConfig(concepts=[HARMFUL]),
        "ablate+allow": GuardConfig(concepts=[HARMFUL], allow=[TARGET]),
    }
    runs: dict[str, dict] = {}
    unguarded = None  # the first variant's measures, once run
    tmp = Path(tempfile.mkdtemp(prefix="geomsafe-allow-list-"))
    try:
        for name, gcfg in variants.items():
            t1 = time.perf_counter()
            res = finetune(
                lm,
                train,
                out=tmp / name.replace("+", "_"),
                guard=None if gcfg is None else "ablate",
                guard_concepts=[HARMFUL],
                atlas=atlas,
                config=config,
                guard_config=gcfg,
                progress=False,
            )
            got = measure(res.lm, held, held_data, atlas, rows)
            runs[name] = {
                "heldout_loss": got["heldout_loss"],
                "train_loss_first": res.metrics["first_loss"],
                "train_loss_final": res.metrics["final_loss"],
                "change": {
                    where: {
                        n: float((got[where][n] - base[where][n]).mean()) for n in (HARMFUL, TARGET)
                    }
                    for where in ("response", "last_prompt")
                },
                "behaviour": behaviour(got, base, unguarded, args.n_boot, args.seed),
                "seconds": time.perf_counter() - t1,
            }
            unguarded = unguarded or got
            del res
            r = runs[name]
            print(
                f"[{name}] {r['seconds']:.0f} s; held-out loss {r['heldout_loss']:.4f}; "
                f"train loss {r['train_loss_first']:.3f} -> {r['train_loss_final']:.3f}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    un = runs["unguarded"]["change"]
    print(
        f"\nbase held-out loss {base['heldout_loss']:.4f}; changes are tuned - base, mean over "
        f"{len(held)} held-out examples (response tokens / last prompt token)"
    )
    print(
        f"{'run':<14} {'held-out loss':>13} {'Δ' + TARGET + ' resp':>15} {'kept':>6} "
        f"{'Δ' + TARGET + ' last':>15} {'kept':>6} {'Δ' + HARMFUL + ' resp':>17} "
        f"{'Δ' + HARMFUL + ' last':>17}"
    )
    for name, r in runs.items():
        c = r["change"]
        kept = {
            where: c[where][TARGET] / un[where][TARGET] if un[where][TARGET] else float("nan")
            for where in ("response", "last_prompt")
        }
        r["target_kept"] = kept
        print(
            f"{name:<14} {r['heldout_loss']:13.4f} {c['response'][TARGET]:+15.4f} "
            f"{kept['response']:6.2f} {c['last_prompt'][TARGET]:+15.4f} "
            f"{kept['last_prompt']:6.2f} {c['response'][HARMFUL]:+17.4f} "
            f"{c['last_prompt'][HARMFUL]:+17.4f}"
        )
    print(
        f"\nbehaviour: log-odds change vs base, nats/token [95% CI], and the share of the "
        f"unguarded change kept; {TARGET}: {len(rows[0].pairs)} held-out pairs (warm over "
        f"matter-of-fact), {HARMFUL}: {len(rows[1].pairs)} evaluation-half pairs"
    )
    for name, r in runs.items():
        parts = []
        for concept, b in r["behaviour"].items():
            c = b["change"]
            text = f"{concept} {c['value']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
            if "kept" in b:
                k = b["kept"]
                text += f" kept {k['value']:.2f} [{k['low']:.2f}, {k['high']:.2f}]"
            parts.append(text)
        print(f"{name:<14} " + "; ".join(parts))
    payload = {
        "args": vars(args),
        "machine": machine(),
        "layers": {HARMFUL: l_h, TARGET: l_t},
        "cosine": cos,
        "base_heldout_loss": base["heldout_loss"],
        "rows": {ps.name: {"n": len(ps.pairs), "sha256": ps.sha256()} for ps in rows},
        "runs": runs,
        "seconds": time.perf_counter() - t0,
    }
    write_json(args.out, payload)
    print(f"\n{time.perf_counter() - t0:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
