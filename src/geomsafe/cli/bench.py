"""`geomsafe bench`: the end-to-end benchmark table."""

from __future__ import annotations

import shlex
import sys

import click

from geomsafe.artefacts import BENCH_JSON, BENCH_TABLE
from geomsafe.bench import BenchConfig, bench, preset
from geomsafe.bench.table import COLUMNS, cells, correlation_lines
from geomsafe.cli.common import common_options, config_option, model_option, print_table
from geomsafe.config import help_of
from geomsafe.options import split_csv

# the size options' defaults are the chosen preset's (quick or full)
_GUARD_HELP = help_of(BenchConfig, "guard") + " [default: projection]"


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
@config_option(BenchConfig, "tasks", default=None)
@config_option(BenchConfig, "guard", default=None, help=_GUARD_HELP)
@config_option(BenchConfig, "n_train", type=int, default=None)
@config_option(BenchConfig, "steps", type=int, default=None)
@config_option(BenchConfig, "learning_rate", "--lr", type=float, default=None)
@config_option(BenchConfig, "n_prompts", type=int, default=None)
@config_option(BenchConfig, "samples_per_prompt", "--samples", type=int, default=None)
@config_option(BenchConfig, "data_root", type=click.Path(file_okay=False), default=None)
@common_options("overwrite", "seed", "threads", "no_progress", seed=None)
def bench_cmd(model, out, quick, tasks, guard, overwrite, threads, no_progress, **sizes) -> None:
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
    result = bench(
        model,
        out=out,
        config=cfg,
        overwrite=overwrite,
        command=command,
        progress=not no_progress,
    )
    print_table(list(COLUMNS), [cells(r) for r in result.rows])
    click.echo("")
    for line in correlation_lines(result.correlations, "overlap vs toxic increase"):
        click.echo(line)
    for line in correlation_lines(result.shift_correlations, "predicted vs measured shift"):
        click.echo(line)
    click.echo(f"\nwrote {result.out / BENCH_JSON} and {BENCH_TABLE}")
