"""`geomsafe audit`: overlap of fine-tuning targets with harmful features."""

from __future__ import annotations

import click

from geomsafe.audit import AuditConfig, AuditResult, audit
from geomsafe.audit.config import TOKEN_RULES
from geomsafe.cli.common import config_option, model_option, print_table
from geomsafe.distributed import is_main


def print_audit(result: AuditResult) -> None:
    rows = []
    for r in result.rows:
        band = r["band"]
        rows.append(
            [
                r["target"],
                r["harmful"],
                r["score"],
                f"[{r['ci']['low']:.3f}, {r['ci']['high']:.3f}]",
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


_D = AuditConfig()


def _opt(name: str, *decls: str, **kwargs):
    return config_option(_D, name, *decls, **kwargs)


@click.command("audit")
@model_option
@_opt("target", "--target", "-t")
@_opt("concepts", "--concepts")
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace the results already in --out.")
@_opt("layers", "--layers")
@_opt("layer", "--layer", type=int)
@_opt("band", "--band")
@_opt("max_pairs", "--max-pairs", type=int, show_default=True)
@_opt("tokens", "--tokens", show_default=True, type=click.Choice(list(TOKEN_RULES)))
@_opt("n_perm", "--n-perm", type=int, show_default=True)
@_opt("n_boot", "--n-boot", type=int, show_default=True)
@click.option("--no-heads", is_flag=True, help="Skip attention-head attribution.")
@_opt("seed", "--seed", type=int, show_default=True)
@_opt("batch_size", "--batch-size", type=int, show_default=True)
@_opt("threads", "--threads", type=int)
def audit_cmd(model, out, overwrite, no_heads, **options) -> None:
    """Where do harmful features sit relative to a fine-tuning target?"""
    # the config is built (and every number checked) inside audit() before the model loads
    result = audit(model, out=out, overwrite=overwrite, heads=not no_heads, **options)
    if not is_main():  # one table under torchrun
        return
    print_audit(result)
    click.echo(f"\n{result.report['seconds']:.1f} s" + (f"; wrote {out}" if out else ""))
