"""`geomsafe audit`: overlap of fine-tuning targets with harmful features."""

from __future__ import annotations

import click

from geomsafe.audit import AuditResult, audit
from geomsafe.cli.common import model_option, print_table
from geomsafe.options import parse_layers, split_csv


def print_audit(result: AuditResult) -> None:
    rows = []
    for r in result.rows:
        band = r["band"]
        rows.append(
            [
                r["target"],
                r["harmful"],
                r["score"],
                f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                r["p_value"],
                r["null_q95"],
                r["layer"],
                r["auroc"],
                band["score"],
                band["p_value"],
            ]
        )
    print_table(
        [
            "target",
            "nearest harmful",
            "overlap",
            "95% CI",
            "p",
            "null q95",
            "layer",
            "AUROC",
            "band overlap",
            "band p",
        ],
        rows,
    )


@click.command("audit")
@model_option
@click.option("--target", "-t", help="Target concept(s), comma-separated (default: all targets).")
@click.option(
    "--concepts",
    help="Concepts: built-in names, .jsonl files, persona:PATH, "
    "toxigen:PATH; comma-separated (default: all built-in).",
)
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--layers", help="Layers to extract, e.g. '0,5,10' or '4:20' (default: all).")
@click.option("--layer", type=int, help="Report every target at this layer (default: its best).")
@click.option("--band", help="Layer band to average over, e.g. '10:20' (default: middle third).")
@click.option(
    "--max-pairs",
    type=int,
    default=64,
    show_default=True,
    help="Pairs per concept (a fixed random sample).",
)
@click.option(
    "--tokens",
    default="response",
    show_default=True,
    type=click.Choice(["response", "prompt", "last", "all"]),
)
@click.option("--n-perm", type=int, default=200, show_default=True)
@click.option("--n-boot", type=int, default=200, show_default=True)
@click.option("--no-heads", is_flag=True, help="Skip attention-head attribution.")
@click.option("--seed", type=int, default=0, show_default=True)
def audit_cmd(
    model,
    target,
    concepts,
    out,
    layers,
    layer,
    band,
    max_pairs,
    tokens,
    n_perm,
    n_boot,
    no_heads,
    seed,
) -> None:
    """Where do harmful features sit relative to a fine-tuning target?"""
    result = audit(
        model,
        target=split_csv(target) or None,
        concepts=split_csv(concepts) or None,
        out=out,
        layers=parse_layers(layers),
        layer=layer,
        band=parse_layers(band),
        max_pairs=max_pairs,
        tokens=tokens,
        n_perm=n_perm,
        n_boot=n_boot,
        heads=not no_heads,
        seed=seed,
    )
    print_audit(result)
    click.echo(f"\n{result.report['seconds']:.1f} s" + (f"; wrote {out}" if out else ""))
