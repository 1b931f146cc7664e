"""Time overhead of each geometric guard on LoRA training steps, side by side in one run.

    python experiments/guard_overhead.py [--model default] [--mode loop|trainer|both] [--iters 12]
        [--steps 6] [--reps 2] [--batch-size 4] [--threads 1] [--atlas FOLDER] [--layer L]

Two measurements, each with no guard, each guard alone and all four together:

- ``loop`` (default): one peft LoRA model (all linear layers) and one batch; every iteration
  times one full training step (forward under the guards' hooks, penalties, backward, AdamW
  step, ``after_step``) for every variant, round-robin with a rotating start, so that load from
  other processes hits every variant alike. Median over ``--iters`` iterations.
- ``trainer``: ``geomsafe.train.steps.train_steps`` (transformers Trainer) on the same batches per
  variant, interleaved per repetition, dropping each call's first step (warm-up).

Prints the median step time of each variant and its ratio to the unguarded step (goal: a few
percent). The guarded directions are random unit vectors at ``--layer`` unless ``--atlas`` names
a saved FeatureAtlas: timing does not depend on which directions are guarded.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from geomsafe.atlas import FeatureAtlas
from geomsafe.guard import GUARDS, GuardConfig, build_guards
from geomsafe.guard.base import combined, total_penalty
from geomsafe.models import LoadedModel, load
from geomsafe.train import TrainConfig
from geomsafe.train.data import load_data
from geomsafe.train.lora import make_peft_model, peft_layer_template
from geomsafe.train.steps import train_steps
from geomsafe.train.trainer import PadCollator
from lib.common import RESULTS, machine, sample_examples, write_json


def random_atlas(
    n_layers: int, width: int, layer: int, n_harmful: int, n_targets: int
) -> FeatureAtlas:
    g = torch.Generator().manual_seed(0)
    names = {f"harm{i}": "harmful" for i in range(n_harmful)}
    names.update({f"target{i}": "target" for i in range(n_targets)})
    dirs = {}
    for name in names:
        d = torch.randn(n_layers, width, generator=g)
        dirs[name] = d / d.norm(dim=-1, keepdim=True)
    stats = {name: {"best_layer": layer} for name in names}
    return FeatureAtlas(list(range(n_layers)), dirs, names, stats, {"source": "random"})


def variants() -> dict[str, list[str] | None]:
    out: dict[str, list[str] | None] = {"none": None}
    out.update({name: [name] for name in GUARDS})
    out["all"] = list(GUARDS)
    return out


def loop_times(
    lm: LoadedModel, examples, atlas: FeatureAtlas, gcfg: GuardConfig, args
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Round-robin per-step timing of every variant on one LoRA model and one batch: wall
    times and the process's CPU times (with one thread, CPU time is what the step itself cost,
    and barely moves when other processes compete for the cores)."""
    config = TrainConfig(batch_size=args.batch_size, seed=0)
    model = make_peft_model(copy.deepcopy(lm.model), config)
    template = peft_layer_template(lm)
    data = load_data(examples[: args.batch_size], lm.tokenizer)
    batch = PadCollator(lm.tokenizer.pad_token_id or 0)(data.features)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    guards = {
        name: build_guards(kinds, atlas, gcfg, template, tokenizer=lm.tokenizer) if kinds else []
        for name, kinds in variants().items()
    }

    def step(gs) -> tuple[float, float]:
        w0, c0 = time.perf_counter(), time.process_time()
        with combined(gs, model):
            loss = model(**batch).loss
        penalty = total_penalty(gs, model, batch)
        (loss if penalty is None else loss + penalty).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        for g in gs:
            g.after_step(model)
        return time.perf_counter() - w0, time.process_time() - c0

    names = list(guards)
    for name in names:  # warm-up (the steer guard measures its norm scale here)
        step(guards[name])
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for it in range(args.iters):
        order = names[it % len(names) :] + names[: it % len(names)]
        for name in order:
            w, c = step(guards[name])
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu


def trainer_times(
    lm: LoadedModel, examples, atlas: FeatureAtlas, gcfg: GuardConfig, args
) -> dict[str, list[float]]:
    config = TrainConfig(batch_size=args.batch_size, seed=0)
    times: dict[str, list[float]] = {name: [] for name in variants()}
    for rep in range(args.reps):  # interleaved so that drift hits every variant alike
        for name, guards in variants().items():
            steps = train_steps(
                lm,
                examples,
                guards=guards,
                config=config,
                n_steps=args.steps,
                atlas=atlas,
                guard_config=gcfg if guards else None,
            )
            times[name].extend(steps[1:])
            print(
                f"  trainer rep {rep} {name:<11} median step {statistics.median(steps[1:]):.4f} s"
            )
    return times


def table(title: str, times: dict[str, list[float]]) -> dict[str, dict[str, object]]:
    """Median and minimum step time of each variant and their ratios to no guard."""
    base_med = statistics.median(times["none"])
    base_min = min(times["none"])
    print(f"\n{title}")
    print(f"{'guard':<11} {'median s':>9} {'ratio':>6} {'overhead':>9} {'min s':>8} {'ratio':>6}")
    rows: dict[str, dict[str, object]] = {}
    for name, ts in times.items():
        med, low = statistics.median(ts), min(ts)
        rows[name] = {
            "median_step_s": med,
            "ratio": med / base_med,
            "min_step_s": low,
            "ratio_min": low / base_min,
            "steps_s": ts,
        }
        print(
            f"{name:<11} {med:9.4f} {med / base_med:6.3f} {100 * (med / base_med - 1):8.1f}% "
            f"{low:8.4f} {low / base_min:6.3f}"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--atlas", default=None, help="a saved FeatureAtlas folder (else random)")
    ap.add_argument("--layer", type=int, default=None, help="guarded layer (default: middle)")
    ap.add_argument("--harmful", type=int, default=2, help="random harmful directions")
    ap.add_argument("--targets", type=int, default=2, help="random target directions")
    ap.add_argument("--mode", choices=("loop", "trainer", "both"), default="loop")
    ap.add_argument("--iters", type=int, default=12, help="loop mode: timed rounds")
    ap.add_argument("--steps", type=int, default=6, help="trainer mode: steps per call")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: stable on a shared CPU, where spinning threads are erratic)",
    )
    ap.add_argument("--out", default=str(RESULTS / "guard_overhead.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    lm = load(args.model)
    layer = args.layer if args.layer is not None else lm.n_layers // 2
    if args.atlas:
        atlas = FeatureAtlas.load(args.atlas)
    else:
        atlas = random_atlas(lm.n_layers, lm.d_model, layer, args.harmful, args.targets)
    examples = sample_examples(args.examples)
    gcfg = GuardConfig(concepts=atlas.harmful)
    where = sorted({atlas.best_layer(n) for n in atlas.harmful})
    print(
        f"model {args.model}: {lm.n_layers} layers, width {lm.d_model}; batch "
        f"{args.batch_size}; guarded {atlas.harmful} at layer(s) {where}; targets "
        f"{atlas.targets}; threads {torch.get_num_threads()}"
    )
    results = {}
    if args.mode in ("loop", "both"):
        wall, cpu = loop_times(lm, examples, atlas, gcfg, args)
        title = f"loop: one step per variant, round-robin x {args.iters}"
        results["loop_cpu"] = table(f"{title}; process CPU time", cpu)
        results["loop_wall"] = table(f"{title}; wall time", wall)
    if args.mode in ("trainer", "both"):
        times = trainer_times(lm, examples, atlas, gcfg, args)
        results["trainer"] = table(
            f"trainer: train_steps x {args.reps} per variant, {args.steps - 1} timed steps each",
            times,
        )
    command = (
        f"python experiments/guard_overhead.py --model {args.model} --mode {args.mode} --iters "
        f"{args.iters} --steps {args.steps} --reps {args.reps} --batch-size {args.batch_size} "
        f"--examples {args.examples} --threads {args.threads}"
        + (f" --atlas {args.atlas}" if args.atlas else "")
        + (f" --layer {args.layer}" if args.layer is not None else "")
    )
    write_json(
        args.out,
        {
            "model": args.model,
            "layers": lm.n_layers,
            "width": lm.d_model,
            "guarded": atlas.harmful,
            "guard_layers": where,
            "targets": atlas.targets,
            "atlas": args.atlas or "random unit directions",
            "batch_size": args.batch_size,
            "results": results,
            "machine": machine(),
            "command": command,
        },
    )


if __name__ == "__main__":
    main()
