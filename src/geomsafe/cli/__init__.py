"""The `geomsafe` command line: a thin shell over the Python API."""

from __future__ import annotations

import sys
import warnings

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
            detail = f"; {exc}" if str(exc) else ""
            click.echo(f"geomsafe: interrupted{detail}", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geomsafe")
@click.option(
    "--device",
    help="Where models load: auto (cuda:<LOCAL_RANK> when CUDA is there), cpu, cuda, cuda:N, "
    "mps (default: $GEOMSAFE_DEVICE or cpu; finetune: auto).",
)
@click.option(
    "--dtype",
    help="Model weights: auto (bf16 on a CUDA GPU that has it), float32, bfloat16, float16 "
    "(default: $GEOMSAFE_DTYPE or float32).",
)
def main(device: str | None = None, dtype: str | None = None) -> None:
    """Geometry-centric safety for LLM fine-tuning."""
    warnings.formatwarning = _one_line_warning
    if device is not None or dtype is not None:
        _set_device_dtype(device, dtype)


def _set_device_dtype(device: str | None, dtype: str | None) -> None:
    """Check ``--device`` / ``--dtype`` (a bad value fails before any work) and pass them to
    :func:`geomsafe.models.load` as ``GEOMSAFE_DEVICE`` / ``GEOMSAFE_DTYPE`` for this command
    (restored when it ends, so a caller's environment is left as it was)."""
    import os

    from geomsafe.models import DEVICE_ENV, DTYPE_ENV, resolve_device, resolve_dtype

    chosen = {}
    if device is not None:
        chosen[DEVICE_ENV] = "auto" if device == "auto" else resolve_device(device)
    if dtype is not None:
        resolve_dtype(dtype)
        chosen[DTYPE_ENV] = dtype
    before = {k: os.environ.get(k) for k in chosen}
    os.environ.update(chosen)

    def restore() -> None:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    click.get_current_context().call_on_close(restore)


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


_register()
