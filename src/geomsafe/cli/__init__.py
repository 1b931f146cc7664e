"""The `geomsafe` command line: a thin shell over the Python API."""

from __future__ import annotations

import sys
import warnings
from typing import NoReturn

import click

from geomsafe import __version__
from geomsafe.errors import GeomsafeError


class _Group(click.Group):
    """Turns GeomsafeError (and a few OS errors) into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except GeomsafeError as exc:
            click.echo(f"geomsafe: error: {exc}", err=True)
            sys.exit(2)
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            click.echo(f"geomsafe: error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:  # a command may say what was kept: "; <detail>"
            _interrupted(str(exc))
        except Exception as exc:
            _exit_if_disk_full(exc)
            raise

    def make_context(self, *args, **kwargs) -> click.Context:  # type: ignore[override]
        try:  # parsing may import (lazy commands, --help): Ctrl-C there too
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt as exc:
            _interrupted(str(exc))


# --- Ctrl-C and a full disk anywhere in the command line: one line, no traceback -------------
# Ctrl-C while starting (importing torch and transformers), parsing or working: exit 130.
# A full disk (ENOSPC) that no writer turned into a GeomsafeError: exit 2.


def _interrupted(detail: str = "") -> NoReturn:
    click.echo(f"geomsafe: interrupted{'; ' + detail if detail else ''}", err=True)
    sys.exit(130)


def _exit_if_disk_full(exc: Exception) -> None:
    from geomsafe.diskfull import disk_full_error, is_disk_full

    if is_disk_full(exc):
        click.echo(f"geomsafe: error: {disk_full_error(getattr(exc, 'filename', None))}", err=True)
        sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geomsafe")
def main() -> None:
    """Geometry-centric safety for LLM fine-tuning."""
    warnings.formatwarning = _one_line_warning


_formatwarning = warnings.formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """geomsafe's own warnings ("geomsafe: ...") as one line, without the source line."""
    text = str(message)
    if text.startswith("geomsafe: "):
        return text + "\n"
    return _formatwarning(message, category, filename, lineno, line)


def _register() -> None:
    from geomsafe.cli import audit, bench, evaluate, finetune, info, predict, report, toy
    from geomsafe.cli.firewall import firewall_group, serve_cmd

    main.add_command(info.info)
    main.add_command(audit.audit_cmd)
    main.add_command(predict.predict_cmd)
    main.add_command(finetune.finetune)
    main.add_command(evaluate.evaluate)
    main.add_command(report.report_cmd)
    main.add_command(bench.bench_cmd)
    main.add_command(toy.toy)
    main.add_command(firewall_group)
    main.add_command(serve_cmd)


try:
    _register()
except KeyboardInterrupt:
    _interrupted()
