"""Options and helpers shared by the CLI commands.

Every option of a config field is made by :func:`config_option` (default and help from the
field); the flags every working command shares (``--overwrite``, ``--seed``, ``--threads``,
``--no-progress``) are made once, by :func:`common_options`, with one help text each
(:data:`COMMON_HELP`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import click

from geomsafe.errors import GeomsafeError

model_option = click.option(
    "--model",
    "-m",
    default="default",
    show_default=True,
    help="'default' (embedded SmolLM2-135M-Instruct), 'qwen-coder' or 'gemma-270m' (wheels, see "
    "README), a .gguf file, a model folder or a hub id.",
)

# the one help text of each common flag (tests/test_cli_flags.py checks every command uses it)
COMMON_HELP: dict[str, str] = {
    "overwrite": "Replace what is already in --out (finetune: an interrupted run's "
    "checkpoints too).",
    "seed": "Seed of every random choice of the command (same inputs and seed: same numbers).",
    "threads": "torch CPU threads (default: torch's choice; on a busy machine 1 can be much "
    "faster).",
    "no_progress": "No progress bars.",
}


def _overwrite(f: Callable) -> Callable:
    return click.option("--overwrite", is_flag=True, help=COMMON_HELP["overwrite"])(f)


def _threads(f: Callable) -> Callable:
    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        # the whole command runs with these torch threads (restored after); a command whose
        # config has a ``threads`` field gets the value too and records it
        from geomsafe.threads import torch_threads

        n = kwargs.get("threads")
        if n is not None and n < 1:
            raise GeomsafeError(f"threads must be >= 1, not {n}")
        with torch_threads(n):
            return f(*args, **kwargs)

    return click.option("--threads", type=int, default=None, help=COMMON_HELP["threads"])(run)


def _no_progress(f: Callable) -> Callable:
    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        # the command passes progress=not no_progress to its own bars; these are the bars of
        # the libraries it calls (transformers' "Loading weights", the hub's downloads)
        if not kwargs.get("no_progress"):
            return f(*args, **kwargs)
        with library_bars_off():
            return f(*args, **kwargs)

    return click.option("--no-progress", is_flag=True, help=COMMON_HELP["no_progress"])(run)


@contextlib.contextmanager
def library_bars_off() -> Iterator[None]:
    """transformers' and huggingface_hub's progress bars off inside the block (restored)."""
    import huggingface_hub.utils as hub
    import transformers.utils.logging as hf

    hf_on, hub_off = hf.is_progress_bar_enabled(), hub.are_progress_bars_disabled()
    hf.disable_progress_bar()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        if hf_on:
            hf.enable_progress_bar()
        if not hub_off:
            hub.enable_progress_bars()


def common_options(*names: str, seed: int | None = 0) -> Callable[[Callable], Callable]:
    """The common flags ``names`` (of :data:`COMMON_HELP`) on a command, with their shared help.
    ``seed`` is the default of ``--seed`` (None: the command's own, e.g. a preset's).
    ``--threads`` runs the whole command with that many torch threads."""
    unknown = sorted(set(names) - set(COMMON_HELP))
    if unknown:
        raise ValueError(f"unknown common option(s): {', '.join(unknown)}")

    def decorate(f: Callable) -> Callable:
        for name in reversed(names):
            if name == "overwrite":
                f = _overwrite(f)
            elif name == "seed":
                f = click.option(
                    "--seed",
                    type=int,
                    default=seed,
                    show_default=seed is not None,
                    help=COMMON_HELP["seed"],
                )(f)
            elif name == "threads":
                f = _threads(f)
            else:
                f = _no_progress(f)
        return f

    return decorate


def config_option(config: Any, name: str, *decls: str, **kwargs: Any):
    """A click option for field ``name`` of the config class (or object) ``config``: its
    default (a tuple joined with commas; ``default=`` overrides it), shown when not None, and,
    unless ``help`` is given, the field's ``metadata["help"]``. The flag is ``--<name>`` unless
    ``decls`` are given; the value reaches the command as ``name`` unless a decl names it."""
    cls = config if isinstance(config, type) else type(config)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise ValueError(f"{cls.__name__} has no field {name!r}")
    if "default" not in kwargs:
        kwargs["default"] = getattr(config if not isinstance(config, type) else cls(), name)
    if isinstance(kwargs["default"], (tuple, list)):
        kwargs["default"] = ",".join(map(str, kwargs["default"]))
    kwargs.setdefault("show_default", kwargs["default"] is not None)
    kwargs.setdefault("help", fields[name].metadata.get("help"))
    decls = decls or ("--" + name.replace("_", "-"),)
    if all(d.startswith("-") for d in decls):
        decls = (*decls, name)
    return click.option(*decls, **kwargs)


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
