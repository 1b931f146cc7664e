"""`geomsafe evaluate`: toxic-output rate, over-refusal, trait probes and behavioural log-odds,
before vs after."""

from __future__ import annotations

import click

from geomsafe.cli.common import common_options, config_option, model_option, print_table
from geomsafe.config import default_of
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate import EvalConfig, EvalResult
from geomsafe.evaluate import evaluate as run_evaluate


class _Count(click.ParamType):
    """A count >= 0 or ``all`` (None)."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "all":
            return None
        try:
            return int(value)
        except ValueError:
            raise GeomsafeError(
                f"--{param.name.replace('_', '-')} takes a number or 'all'"
            ) from None


COUNT = _Count()


def print_eval(result: EvalResult) -> None:
    headers, rows = result.table()
    print_table(headers, [list(r) for r in rows])
    for w in result.warnings:
        click.echo(f"note: {w}")


@click.command("evaluate")
@model_option
@click.option(
    "--adapter", type=click.Path(), help="peft LoRA adapter folder (evaluates base and adapted)."
)
@click.option("--baseline", type=click.Path(), help="eval.json (or its folder) to compare with.")
@click.option(
    "--atlas",
    type=click.Path(),
    help="FeatureAtlas folder: project responses on its harmful directions.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    help="Output folder (eval.json, generations.jsonl).",
)
@config_option(EvalConfig, "prompts")
@config_option(EvalConfig, "n_prompts", type=COUNT)
@config_option(EvalConfig, "samples_per_prompt", type=int)
@config_option(EvalConfig, "max_new_tokens", type=int)
@config_option(EvalConfig, "temperature", type=float)
@config_option(EvalConfig, "top_p", type=float)
@config_option(EvalConfig, "threshold", type=float)
@config_option(EvalConfig, "n_probe", type=int)
@config_option(EvalConfig, "traits")
@config_option(EvalConfig, "em_probes", "--em-probes/--no-em-probes")
@config_option(EvalConfig, "n_xstest", type=int)
@config_option(EvalConfig, "logodds")
@config_option(EvalConfig, "logodds_pairs", type=COUNT)
@click.option(
    "--likelihood-only",
    is_flag=True,
    help="Only the rows read off likelihoods (log-odds, persona and EM probes): no sampled "
    "generation, no XSTest (same as --n-prompts 0 --n-xstest 0).",
)
@config_option(EvalConfig, "batch_size", type=int)
@config_option(EvalConfig, "n_boot", type=int)
@config_option(EvalConfig, "data_root", type=click.Path())
@common_options("overwrite", "seed", "threads", "no_progress", seed=default_of(EvalConfig, "seed"))
def evaluate(
    model,
    adapter,
    baseline,
    atlas,
    out,
    overwrite,
    likelihood_only,
    threads,
    no_progress,
    **options,
) -> None:
    """Toxic-output rate, over-refusal, trait probes and behavioural log-odds, before vs after
    fine-tuning."""
    # --threads is applied around the whole command by cli.common.common_options
    if likelihood_only:
        options.update(n_prompts=0, n_xstest=0)
    result = run_evaluate(
        model,
        adapter=adapter,
        baseline=baseline,
        atlas=atlas,
        out=out,
        overwrite=overwrite,
        progress=not no_progress,
        **options,
    )
    print_eval(result)
    click.echo(f"\n{result.seconds:.1f} s" + (f"; wrote {out}" if out else ""))
