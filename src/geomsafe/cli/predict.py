"""`geomsafe predict`: pre-flight risk of a fine-tuning data set."""

from __future__ import annotations

import click

from geomsafe.cli.common import model_option, print_table
from geomsafe.options import split_csv
from geomsafe.predict import PredictResult, predict


def print_predict(result: PredictResult) -> None:
    rows = [
        [
            c.concept,
            c.layer,
            c.risk,
            c.projection_difference if c.projection_difference is not None else "-",
            c.prompt_anchored,
            c.gradient if c.gradient is not None else "-",
            c.gradient_alignment if c.gradient_alignment is not None else "-",
            c.method,
        ]
        for c in sorted(result.concepts, key=lambda c: -c.risk)
    ]
    print_table(
        [
            "concept",
            "layer",
            "risk",
            "proj. diff",
            "prompt-anchored",
            "gradient",
            "alignment",
            "method",
        ],
        rows,
    )
    click.echo(
        f"\noverall risk {result.overall_risk:.3f} ({result.overall_concept}); "
        f"scored {result.n_examples} of {result.n_total} examples"
    )


@click.command("predict")
@model_option
@click.option(
    "--data",
    "-d",
    required=True,
    help="Chat or prompt/completion JSONL, or task:NAME for a built-in task set.",
)
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--atlas",
    type=click.Path(exists=True),
    help="Audit folder with an atlas (default: extract the built-in harmful concepts).",
)
@click.option("--concepts", help="Harmful concepts to score, comma-separated (default: all).")
@click.option(
    "--max-examples",
    type=int,
    default=200,
    show_default=True,
    help="Score a fixed random sample of this many examples.",
)
@click.option(
    "--no-generate",
    is_flag=True,
    help="Skip the model's own responses: the cheap prompt-anchored estimate.",
)
@click.option(
    "--no-gradient",
    is_flag=True,
    help="Skip the first-order gradient estimate (risk then from the projection difference).",
)
@click.option("--max-new-tokens", type=int, default=48, show_default=True)
@click.option(
    "--filter", "filter_k", type=int, help="Write filtered.jsonl without the K riskiest examples."
)
@click.option(
    "--attack",
    "attack_k",
    type=int,
    help="Red-team: write attack.jsonl with the K benign-looking examples that push "
    "hardest along a harmful direction.",
)
@click.option("--seed", type=int, default=0, show_default=True)
def predict_cmd(
    model,
    data,
    out,
    atlas,
    concepts,
    max_examples,
    no_generate,
    no_gradient,
    max_new_tokens,
    filter_k,
    attack_k,
    seed,
) -> None:
    """Will fine-tuning on this data set amplify harmful traits? Which examples drive it?"""
    if (filter_k or attack_k) and not out:
        raise click.UsageError("--filter and --attack write files: give --out")
    result = predict(
        model,
        data,
        out=out,
        atlas=atlas,
        concepts=split_csv(concepts) or None,
        max_examples=max_examples,
        generate=not no_generate,
        gradient=not no_gradient,
        max_new_tokens=max_new_tokens,
        filter_k=filter_k,
        attack_k=attack_k,
        seed=seed,
    )
    print_predict(result)
    if out:
        click.echo(f"wrote {out}")
