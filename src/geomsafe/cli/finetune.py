"""`geomsafe finetune`: LoRA fine-tuning with geometric guards."""

from __future__ import annotations

import math
import signal
import sys

import click

from geomsafe.cli.common import config_option, model_option, print_table
from geomsafe.guard import GuardConfig, PilotConfig
from geomsafe.guard.base import GUARD_SOURCES, STEER_SCALES
from geomsafe.guard.schedule import SCHEDULES
from geomsafe.options import parse_layers, split_csv
from geomsafe.train import FinetuneResult, TrainConfig
from geomsafe.train import finetune as run_finetune
from geomsafe.train.outdir import resume_hint
from geomsafe.train.trainer import is_main_process

_DEFAULT = GuardConfig()
_PILOT = PilotConfig()


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
    pilot = result.provenance.get("pilot")
    if pilot:
        rows.append(["pilot shifts kept", ",".join(pilot["kept"])])
    for name, delta in result.projection_change().items():
        rows.append([f"projection change: {name}", f"{delta:+.4f}"])
    if m["n_truncated"] or m["n_skipped"]:
        rows.insert(
            1, ["truncated / skipped (prompt too long)", f"{m['n_truncated']} / {m['n_skipped']}"]
        )
    tps = result.time_per_step
    rows.append(["time/step (median)", "n/a" if math.isnan(tps) else f"{tps:.3f} s"])
    print_table(["finetune", "value"], rows)


_TRAIN = TrainConfig()


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
    help="Guards, comma-separated: orthogonal,steer,ablate,projection,covariance,kl or any kind "
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
@click.option(
    "--guard-layers",
    help="Guarded layers: 'best' (each concept at its best atlas layer), a list '3,4,5' or a "
    "band '3:6' (end excluded).  [default: best]",
)
@click.option(
    "--guard-weight",
    type=float,
    default=_DEFAULT.weight,
    show_default=True,
    help="Penalty weight of the projection/covariance/kl guards.",
)
@click.option(
    "--steer-coeff",
    type=float,
    default=_DEFAULT.steer_coeff,
    show_default=True,
    help="Steer guard: how far along each harmful direction, in --steer-scale units.",
)
@click.option(
    "--steer-scale",
    type=click.Choice(STEER_SCALES),
    default=_DEFAULT.steer_scale,
    show_default=True,
    help="Steer guard unit: median residual norm, the concept's mean-difference norm, or 1.",
)
@click.option(
    "--guard-schedule",
    type=click.Choice(SCHEDULES),
    default=_DEFAULT.schedule,
    show_default=True,
    help="Guard strength per step: constant; front (full for --schedule-steps, then "
    "--schedule-floor); linear_decay (full -> --schedule-floor over --schedule-steps).",
)
@click.option(
    "--schedule-steps",
    type=int,
    help="Length of the strong/decaying phase in optimiser steps (default: a quarter of the "
    "run for front, the whole run for linear_decay).",
)
@click.option(
    "--schedule-floor",
    type=float,
    default=_DEFAULT.schedule_floor,
    show_default=True,
    help="Guard strength after the strong phase, in [0, 1].",
)
@click.option(
    "--allow",
    help="Allowed target concepts, comma-separated (e.g. empathy): the guards act only on "
    "the part of each harmful direction orthogonal to them.",
)
@click.option(
    "--guard-source",
    type=click.Choice(GUARD_SOURCES),
    default=_DEFAULT.source,
    show_default=True,
    help="Guarded directions: the atlas's concepts, or the principal shifts of a short pilot "
    "fine-tune that align with them above a permutation null band.",
)
@click.option(
    "--pilot-steps",
    type=int,
    default=_PILOT.steps,
    show_default=True,
    help="Optimiser steps of the pilot run (--guard-source pilot).",
)
@click.option(
    "--pilot-pcs",
    type=int,
    default=_PILOT.pcs,
    show_default=True,
    help="Principal shifts tested per guarded layer (--guard-source pilot).",
)
@click.option(
    "--pilot-heldout",
    type=int,
    default=_PILOT.heldout,
    show_default=True,
    help="Training examples held out of the pilot and compared base vs pilot.",
)
@config_option(
    _DEFAULT,
    "kl_data",
    "--kl-data",
    show_default=True,
    help="kl guard's reference batch: builtin (task:factual_qa), training (the training batch) "
    "or a JSONL file / task:NAME.",
)
@config_option(
    _TRAIN,
    "mix_safe",
    "--mix-safe",
    type=float,
    show_default=True,
    help="Share of safe examples (refusals, sound answers) interleaved into --data, in [0, 1).",
)
@config_option(
    _TRAIN,
    "mix_safe_data",
    "--mix-safe-data",
    show_default=True,
    help="The safe examples for --mix-safe: builtin or a JSONL file / task:NAME.",
)
@config_option(_TRAIN, "epochs", "--epochs", type=float, show_default=True)
@config_option(
    _TRAIN,
    "max_steps",
    "--max-steps",
    type=int,
    show_default=True,
    help="Optimiser steps; > 0 overrides --epochs.",
)
@config_option(
    _TRAIN, "learning_rate", "--lr", type=float, show_default=True, help="Learning rate."
)
@config_option(_TRAIN, "batch_size", "--batch-size", type=int, show_default=True)
@config_option(
    _TRAIN, "grad_accum", "--grad-accum", type=int, show_default=True, help="Accumulation steps."
)
@config_option(
    _TRAIN,
    "max_length",
    "--max-length",
    type=int,
    show_default=True,
    help="Longest example in tokens; longer ones are an error unless --truncate.",
)
@click.option("--truncate", is_flag=True, help="Cut over-long examples instead of failing.")
@config_option(_TRAIN, "lora_r", "--lora-r", type=int, show_default=True, help="LoRA rank.")
@click.option("--lora-alpha", type=int, help="LoRA alpha (default: 2 x rank).")
@click.option("--max-examples", type=int, help="Use the first N examples of --data.")
@config_option(
    _TRAIN,
    "save_steps",
    "--save-steps",
    type=int,
    show_default=True,
    help="Checkpoint every N steps (and at the end).",
)
@config_option(_TRAIN, "seed", "--seed", type=int, show_default=True)
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


def guard_config_of(
    guard_layers: str | None,
    guard_weight: float,
    steer_coeff: float,
    steer_scale: str,
    guard_schedule: str,
    schedule_steps: int | None,
    schedule_floor: float,
    allow: str | None,
    guard_source: str,
    pilot_steps: int,
    pilot_pcs: int,
    pilot_heldout: int,
    kl_data: str = _DEFAULT.kl_data,
) -> GuardConfig:
    """The GuardConfig of the command's guard options (validated)."""
    return GuardConfig(
        layers=parse_layers(guard_layers),
        weight=guard_weight,
        steer_coeff=steer_coeff,
        steer_scale=steer_scale,
        allow=split_csv(allow) or None,
        schedule=guard_schedule,
        schedule_steps=schedule_steps,
        schedule_floor=schedule_floor,
        source=guard_source,
        pilot=PilotConfig(steps=pilot_steps, pcs=pilot_pcs, heldout=pilot_heldout),
        kl_data=kl_data,
    ).validate()


_GUARD_OPTIONS = (
    "guard_layers",
    "guard_weight",
    "steer_coeff",
    "steer_scale",
    "guard_schedule",
    "schedule_steps",
    "schedule_floor",
    "allow",
    "guard_source",
    "pilot_steps",
    "pilot_pcs",
    "pilot_heldout",
    "kl_data",
)


def _run(
    model,
    data,
    out,
    guard,
    guard_concepts,
    atlas,
    lr,
    lora_r,
    lora_alpha,
    no_progress,
    resume,
    overwrite,
    **rest,
) -> FinetuneResult:
    guard_config = guard_config_of(**{k: rest.pop(k) for k in _GUARD_OPTIONS})
    config = TrainConfig(
        lora_r=lora_r, lora_alpha=lora_alpha or 2 * lora_r, learning_rate=lr, **rest
    )
    return run_finetune(
        model,
        data,
        out=out,
        guard=guard,
        guard_concepts=guard_concepts,
        atlas=atlas,
        config=config,
        resume=resume,
        progress=not no_progress,
        guard_config=guard_config if guard else None,
        overwrite=overwrite,
    )
