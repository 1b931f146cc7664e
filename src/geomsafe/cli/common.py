"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

model_option = click.option(
    "--model",
    "-m",
    default="default",
    show_default=True,
    help="'default' (embedded SmolLM2-135M-Instruct), 'qwen-coder' or 'gemma-270m' (wheels, see "
    "README), a .gguf file, a model folder or a hub id.",
)


def config_option(config: Any, name: str, *decls: str, **kwargs: Any):
    """A click option for field ``name`` of the config object ``config``: its default (a tuple
    joined with commas) and, unless ``help`` is given, the field's ``metadata["help"]``."""
    default = getattr(config, name)
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    if "help" not in kwargs:
        field = next(f for f in dataclasses.fields(config) if f.name == name)
        kwargs["help"] = field.metadata.get("help")
    return click.option(*decls, default=default, **kwargs)


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    """A plain aligned text table on stdout."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
