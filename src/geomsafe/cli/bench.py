"""`geomsafe bench`: the end-to-end benchmark table."""

from __future__ import annotations

import shlex
import sys

import click

from geomsafe.artefacts import BENCH_JSON, BENCH_TABLE
from geomsafe.bench import bench, preset
from geomsafe.bench.table import COLUMNS, cells, correlation_lines
from geomsafe.cli.common import model_option, print_table
from geomsafe.options import split_csv


@click.command("bench")
@model_option
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default="runs/bench",
    show_default=True,
    help="Output folder (bench.json, table.md, runs, evals).",
)
@click.option("--quick", is_flag=True, help="The quick size (under 30 minutes on 2 CPU cores).")
@click.option(
    "--tasks",
    help="Comma-separated tasks (built-in: factual_qa, "
    "instruction_following, code, summarisation; public: insecure, jailbroken, "
    "insecure_small, secure_small; or NAME=FILE.jsonl).",
)
@click.option(
    "--guard",
    help="Guard set of the guarded runs, e.g. projection or "
    "orthogonal,steer; 'none' for unguarded runs only. [default: projection]",
)
@click.option("--n-train", type=int, help="Training examples per task.")
@click.option("--steps", type=int, help="Optimiser steps per fine-tune.")
@click.option("--lr", "learning_rate", type=float, help="Learning rate.")
@click.option("--n-prompts", type=int, help="Evaluation prompts for the toxic-output rate.")
@click.option("--samples", "samples_per_prompt", type=int, help="Samples per prompt.")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    help="Public data folder (default: $GEOMSAFE_DATA or ../shared/data).",
)
@click.option("--seed", type=int, help="Seed of sampling, training and evaluation.")
@click.option("--overwrite", is_flag=True, help="Replace a finished bench in --out.")
def bench_cmd(model, out, quick, tasks, guard, overwrite, **sizes) -> None:
    """Fine-tune on each task with one fixed recipe, without and with a guard; evaluate
    before/after; table of toxic-output increase (with CI), overlap score, predicted and
    measured shift, and their correlations."""
    cfg = preset(
        "quick" if quick else "full",
        tasks=tuple(split_csv(tasks)) or None,
        guard=guard,
        **sizes,
    )
    command = "geomsafe " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = bench(model, out=out, config=cfg, overwrite=overwrite, command=command)
    print_table(list(COLUMNS), [cells(r) for r in result.rows])
    click.echo("")
    for line in correlation_lines(result.correlations, "overlap vs toxic increase"):
        click.echo(line)
    for line in correlation_lines(result.shift_correlations, "predicted vs measured shift"):
        click.echo(line)
    click.echo(f"\nwrote {result.out / BENCH_JSON} and {BENCH_TABLE}")
