"""`geomsafe audit`: overlap of fine-tuning targets with harmful features."""

from __future__ import annotations

import click

from geomsafe.audit import AuditConfig, AuditResult, audit
from geomsafe.capture import TOKEN_RULES
from geomsafe.cli.common import common_options, config_option, model_option, print_table
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


@click.command("audit")
@model_option
@config_option(AuditConfig, "target", "--target", "-t")
@config_option(AuditConfig, "concepts")
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Output folder.")
@config_option(AuditConfig, "layers")
@config_option(AuditConfig, "layer", type=int)
@config_option(AuditConfig, "band")
@config_option(AuditConfig, "max_pairs", type=int)
@config_option(AuditConfig, "tokens", type=click.Choice(list(TOKEN_RULES)))
@config_option(AuditConfig, "n_perm", type=int)
@config_option(AuditConfig, "n_boot", type=int)
@click.option("--no-heads", is_flag=True, help="Skip attention-head attribution.")
@config_option(AuditConfig, "batch_size", type=int)
@common_options("overwrite", "seed", "threads", "no_progress")
def audit_cmd(model, out, overwrite, no_heads, no_progress, **options) -> None:
    """Where do harmful features sit relative to a fine-tuning target?"""
    # the config is built (and every number checked) inside audit() before the model loads
    result = audit(
        model,
        out=out,
        overwrite=overwrite,
        heads=not no_heads,
        progress=not no_progress,
        **options,
    )
    if not is_main():  # one table under torchrun
        return
    print_audit(result)
    click.echo(f"\n{result.report['seconds']:.1f} s" + (f"; wrote {out}" if out else ""))
