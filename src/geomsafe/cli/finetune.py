"""`geomsafe finetune`: LoRA fine-tuning with geometric guards."""

from __future__ import annotations

import math
import signal
import sys

import click

from geomsafe.cli.common import common_options, config_option, model_option, print_table
from geomsafe.config import default_of
from geomsafe.guard import GuardConfig, PilotConfig
from geomsafe.guard.base import GUARD_SOURCES, STEER_SCALES
from geomsafe.guard.schedule import SCHEDULES
from geomsafe.options import parse_layers, split_csv
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
@config_option(GuardConfig, "layers", "--guard-layers", "guard_layers", type=str)
@config_option(GuardConfig, "weight", "--guard-weight", "guard_weight", type=float)
@config_option(GuardConfig, "steer_coeff", type=float)
@config_option(GuardConfig, "steer_scale", type=click.Choice(STEER_SCALES))
@config_option(GuardConfig, "kl_data", type=str)
@config_option(TrainConfig, "mix_safe", type=float)
@config_option(TrainConfig, "mix_safe_data", type=str)
@config_option(
    GuardConfig, "schedule", "--guard-schedule", "guard_schedule", type=click.Choice(SCHEDULES)
)
@config_option(GuardConfig, "schedule_steps", type=int)
@config_option(GuardConfig, "schedule_floor", type=float)
@config_option(GuardConfig, "allow", type=str)
@config_option(
    GuardConfig, "source", "--guard-source", "guard_source", type=click.Choice(GUARD_SOURCES)
)
@config_option(PilotConfig, "steps", "--pilot-steps", "pilot_steps", type=int)
@config_option(PilotConfig, "pcs", "--pilot-pcs", "pilot_pcs", type=int)
@config_option(PilotConfig, "heldout", "--pilot-heldout", "pilot_heldout", type=int)
@config_option(TrainConfig, "epochs", type=float)
@config_option(TrainConfig, "max_steps", type=int)
@config_option(TrainConfig, "learning_rate", "--lr", type=float)
@config_option(TrainConfig, "batch_size", type=int)
@config_option(TrainConfig, "grad_accum", type=int)
@config_option(TrainConfig, "max_length", type=int)
@config_option(TrainConfig, "truncate", is_flag=True, show_default=False)
@config_option(TrainConfig, "lora_r", type=int)
@config_option(
    TrainConfig, "lora_alpha", type=int, default=None, help="LoRA alpha (default: 2 x rank)."
)
@config_option(TrainConfig, "max_examples", type=int)
@config_option(TrainConfig, "save_steps", type=int)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint of --out.")
@common_options("overwrite", "seed", "threads", "no_progress", seed=default_of(TrainConfig, "seed"))
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
    kl_data: str = "builtin",
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
    lora_r,
    lora_alpha,
    no_progress,
    resume,
    overwrite,
    threads,
    **rest,
) -> FinetuneResult:
    # --threads is applied around the whole command by cli.common.common_options
    guard_config = guard_config_of(**{k: rest.pop(k) for k in _GUARD_OPTIONS})
    config = TrainConfig(lora_r=lora_r, lora_alpha=lora_alpha or 2 * lora_r, **rest)
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
