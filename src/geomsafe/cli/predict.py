"""`geomsafe predict`: pre-flight risk of a fine-tuning data set.

Defaults and help of the numeric options come from :class:`geomsafe.predict.PredictConfig`; the
config is built (and checked) before the model is loaded."""

from __future__ import annotations

import click

from geomsafe.cli.common import common_options, config_option, model_option, print_table
from geomsafe.distributed import is_main
from geomsafe.errors import GeomsafeError
from geomsafe.options import split_csv
from geomsafe.predict import PredictConfig, PredictResult, predict
from geomsafe.predict.estimators import ESTIMATORS, per_example_scores

_COLUMNS = [  # (header, ConceptRisk field)
    ("behav. change", "behavioural_change"),
    ("behav. align", "behavioural_alignment"),
    ("proj. diff", "projection_difference"),
    ("prompt-anchored", "prompt_anchored"),
    ("gradient", "gradient"),
    ("grad. align", "gradient_alignment"),
]


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"


def print_predict(result: PredictResult) -> None:
    cols = [(h, k) for h, k in _COLUMNS if any(getattr(c, k) is not None for c in result.concepts)]
    rows = [
        [c.concept, c.layer if c.layer is not None else "-", c.risk, _ci(c.risk_ci)]
        + [getattr(c, k) if getattr(c, k) is not None else "-" for _, k in cols]
        for c in sorted(result.concepts, key=lambda c: -c.risk)
    ]
    print_table(["concept", "layer", "risk", "95% CI", *(h for h, _ in cols)], rows)
    click.echo(
        f"\noverall risk {result.overall_risk:.3f} {_ci(result.overall_ci)} "
        f"({result.overall_concept}; method {result.method}); "
        f"scored {result.n_examples} of {result.n_total} examples"
    )
    if result.overall_concept == "none":
        click.echo("no concept named: no risk above 0 whose CI excludes 0")
    if result.overall_ci is not None:
        click.echo(
            f"CI: bootstrap over the {result.n_examples} sampled examples (which examples were "
            "drawn), not the estimator's error; on the default model the behavioural CIs did "
            "not separate insecure from code in the harmful-first order (docs/predict.md)."
        )


@click.command("predict")
@model_option
@click.option(
    "--data",
    "-d",
    required=True,
    help="Chat or prompt/completion JSONL, or task:NAME for a built-in task set.",
)
@click.option("--out", "-o", help="Output folder.")
@click.option("--atlas", help="Audit folder with an atlas (default: built-in harmful concepts).")
@click.option("--concepts", help="Harmful concepts to score, comma-separated (default: all).")
@config_option(PredictConfig, "method", type=click.Choice(list(ESTIMATORS)))
@config_option(PredictConfig, "max_examples", type=int)
@click.option(
    "--no-generate",
    is_flag=True,
    help="Skip the model's own responses (no projection difference).",
)
@click.option(
    "--no-gradient",
    is_flag=True,
    help="Legacy: --method projection_difference (prompt_anchored with --no-generate).",
)
@config_option(PredictConfig, "max_new_tokens", type=int)
@config_option(PredictConfig, "pairs_per_concept", type=int)
@config_option(PredictConfig, "sketch_rank", type=int)
@config_option(PredictConfig, "lr", type=float)
@config_option(PredictConfig, "filter_k", "--filter", type=int)
@config_option(PredictConfig, "filter_score", type=click.Choice(per_example_scores()))
@config_option(PredictConfig, "attack_k", "--attack", type=int)
@common_options("overwrite", "seed", "threads", "no_progress")
def predict_cmd(
    model, data, out, overwrite, atlas, concepts, no_generate, no_gradient, no_progress, **fields
) -> None:
    """Will fine-tuning on this data set amplify harmful traits? Which examples drive it?"""
    if no_gradient:
        fields["method"] = "projection_difference" if not no_generate else "prompt_anchored"
    config = PredictConfig(
        concepts=tuple(split_csv(concepts)) or None, generate=not no_generate, **fields
    )
    if (config.filter_k or config.attack_k) and not out:
        raise GeomsafeError("--filter and --attack write files: give --out")
    result = predict(
        model,
        data,
        out=out,
        atlas=atlas,
        config=config,
        overwrite=overwrite,
        progress=not no_progress,
    )
    if not is_main():  # one table under torchrun
        return
    print_predict(result)
    if out:
        click.echo(f"wrote {out}")
