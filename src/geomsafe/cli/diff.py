"""`geomsafe diff`: activation differences of a fine-tune (tuned − base) as an atlas."""

from __future__ import annotations

import click

from geomsafe.cli.common import common_options, config_option, model_option, print_table
from geomsafe.diff.config import REMOVALS, TOKEN_RULES, DiffConfig
from geomsafe.diff.run import DiffResult, diff

_D = DiffConfig()


def _opt(name: str, *decls: str, **kwargs):
    return config_option(_D, name, *decls, **kwargs)


def print_diff(result: DiffResult) -> None:
    rows = [
        [
            r["layer"],
            r["mean_norm_raw"],
            r["mean_norm"],
            r["diff_rms"],
            r["base_rms"],
            r["diff_share_removed"],
            ", ".join(f"{e:.3f}" for e in r["explained"]),
        ]
        for r in result.rows
    ]
    print_table(
        ["layer", "|mean| raw", "|mean|", "rms diff", "rms base", "removed", "explained"], rows
    )


@click.command("diff")
@model_option
@click.option(
    "--adapter",
    "-a",
    required=True,
    type=click.Path(),
    help="The fine-tune: a peft adapter folder.",
)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output folder.")
@_opt("data", "--data", show_default=True)
@_opt("max_examples", "--max-examples", type=int, show_default=True)
@_opt("components", "--components", type=int, show_default=True)
@_opt("remove", "--remove", type=click.Choice(list(REMOVALS)), show_default=True)
@_opt("base_pcs", "--base-pcs", type=int, show_default=True)
@_opt("tokens", "--tokens", type=click.Choice(list(TOKEN_RULES)), show_default=True)
@_opt("layers", "--layers")
@_opt("batch_size", "--batch-size", type=int, show_default=True)
@_opt("max_length", "--max-length", type=int, show_default=True)
@common_options("overwrite", "seed", "threads", "no_progress")
def diff_cmd(model, adapter, out, overwrite, no_progress, **options) -> None:
    """What does a fine-tune move? Activation differences tuned − base at every layer on a
    fixed set of prompts and responses: the mean and top principal components per layer,
    written as an atlas (<out>/atlas/) plus diff.json."""
    # the config is built (and every number checked) inside diff() before the model loads
    result = diff(model, adapter, out=out, overwrite=overwrite, progress=not no_progress, **options)
    print_diff(result)
    features = list(result.atlas.directions) if result.atlas is not None else []
    click.echo(
        f"\n{result.provenance['n_tokens']} tokens of {result.provenance['n_examples']} examples; "
        f"features {', '.join(features) or 'none (the adapter moves nothing)'}; "
        f"{result.seconds:.1f} s; wrote {out}"
    )
