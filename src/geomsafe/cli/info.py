"""`geomsafe info`: what a model is made of."""

from __future__ import annotations

import json

import click

from geomsafe.cli.common import model_option, print_table
from geomsafe.models import load


@click.command()
@model_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(model: str, as_json: bool) -> None:
    """Print layers, width, heads and chat-template presence of a model."""
    facts = load(model).info()
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        print_table(["field", "value"], [[k, v] for k, v in facts.items()])
