"""`geomsafe finetune`: LoRA fine-tuning with geometric guards."""

from __future__ import annotations

import math
import signal
import sys

import click

from geomsafe.cli.common import model_option, print_table
from geomsafe.guard import GuardConfig
from geomsafe.train import FinetuneResult, TrainConfig
from geomsafe.train import finetune as run_finetune
from geomsafe.train.outdir import resume_hint
from geomsafe.train.trainer import is_main_process


def print_summary(result: FinetuneResult) -> None:
    m = result.metrics
    rows: list[list[object]] = [
        ["examples", m["n_examples"]],
        ["steps", m["steps"]],
        [f"loss (first {m['window']} steps)", m["first_loss"]],
        [f"loss (last {m['window']} steps)", m["final_loss"]],
    ]
    if result.guards:
        rows.append(["guards", ",".join(result.guards)])
        rows.append([f"guard penalty (last {m['window']})", f"{m['final_penalty']:.4g}"])
    for name, delta in result.projection_change().items():
        rows.append([f"projection change: {name}", f"{delta:+.4f}"])
    if m["n_truncated"] or m["n_skipped"]:
        rows.insert(
            1, ["truncated / skipped (prompt too long)", f"{m['n_truncated']} / {m['n_skipped']}"]
        )
    tps = result.time_per_step
    rows.append(["time/step (median)", "n/a" if math.isnan(tps) else f"{tps:.3f} s"])
    print_table(["finetune", "value"], rows)


@click.command("finetune")
@model_option
@click.option(
    "--data",
    "-d",
    required=True,
    type=click.Path(dir_okay=False),
    help="Training data: chat or prompt/completion JSONL, or task:NAME for a built-in task set.",
)
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder (adapter in peft format, geometry_log.jsonl, run.json).",
)
@click.option(
    "--guard",
    "-g",
    help="Guards, comma-separated: orthogonal,steer,projection,covariance or any kind "
    "registered with geomsafe.guard.register (default: none).",
)
@click.option(
    "--guard-concepts",
    help="Harmful concepts to guard, comma-separated: built-in "
    "names or concept .jsonl files (default: the atlas's harmful concepts or all "
    "built-in ones).",
)
@click.option(
    "--atlas",
    type=click.Path(file_okay=False),
    help="FeatureAtlas folder (default with --guard: extract one for the concepts).",
)
@click.option("--guard-weight", type=float, help="Penalty weight of the guards (GuardConfig).")
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option(
    "--max-steps",
    type=int,
    default=-1,
    show_default=True,
    help="Optimiser steps; > 0 overrides --epochs.",
)
@click.option("--lr", type=float, default=2e-4, show_default=True, help="Learning rate.")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option(
    "--grad-accum", type=int, default=1, show_default=True, help="Gradient accumulation steps."
)
@click.option(
    "--max-length",
    type=int,
    default=512,
    show_default=True,
    help="Longest example in tokens; longer ones are an error unless --truncate.",
)
@click.option("--truncate", is_flag=True, help="Cut over-long examples instead of failing.")
@click.option("--lora-r", type=int, default=8, show_default=True, help="LoRA rank.")
@click.option("--lora-alpha", type=int, help="LoRA alpha (default: 2 x rank).")
@click.option("--max-examples", type=int, help="Use the first N examples of --data.")
@click.option(
    "--save-steps",
    type=int,
    default=50,
    show_default=True,
    help="Checkpoint every N steps (and at the end).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint of --out.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a finished run in --out, or discard the checkpoints of an interrupted one.",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def finetune(**opts) -> None:
    """LoRA fine-tuning with geometric guards against harmful-feature drift."""
    # SIGTERM (a killed or pre-empted job) unwinds like Ctrl-C, so the half-trained run folder
    # is cleaned up (or kept as .partial when it has a checkpoint to --resume from).
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = _run(**opts)
    except KeyboardInterrupt:  # the CLI prints "geomsafe: interrupted; <this>"
        hint = resume_hint(opts["out"])
        if hint is None:
            raise
        raise KeyboardInterrupt(hint) from None
    except SystemExit as exc:
        hint = resume_hint(opts["out"]) if exc.code == 143 else None
        if hint is not None:
            click.echo(f"geomsafe: terminated; {hint}", err=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if is_main_process():  # one table under torchrun / accelerate launch
        print_summary(result)
        click.echo(f"\nadapter + geometry log written to {result.out}")


def _run(
    model,
    data,
    out,
    guard,
    guard_concepts,
    atlas,
    guard_weight,
    lr,
    lora_r,
    lora_alpha,
    no_progress,
    resume,
    overwrite,
    **train,
) -> FinetuneResult:
    config = TrainConfig(
        lora_r=lora_r, lora_alpha=lora_alpha or 2 * lora_r, learning_rate=lr, **train
    )
    guard_config = None
    if guard and guard_weight is not None:
        guard_config = GuardConfig(weight=guard_weight)
    return run_finetune(
        model,
        data,
        out,
        guard=guard,
        guard_concepts=guard_concepts,
        atlas=atlas,
        config=config,
        resume=resume,
        progress=not no_progress,
        guard_config=guard_config,
        overwrite=overwrite,
    )
