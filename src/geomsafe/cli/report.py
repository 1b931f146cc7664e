"""`geomsafe report`: one self-contained HTML page for a results folder."""

from __future__ import annotations

import click

from geomsafe.report import report


@click.command("report")
@click.argument("folder", type=click.Path())
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False),
    help="HTML file to write (default: FOLDER/report.html).",
)
def report_cmd(folder: str, out: str | None) -> None:
    """Render FOLDER (audit, predict, finetune, evaluate or bench results) as HTML."""
    click.echo(f"wrote {report(folder, out)}")
