"""The `geomsafe` command line: a thin shell over the Python API.

Each command's module is imported only when that command runs, so ``geomsafe --help`` does not
import torch; the help lines of the command list are kept here for the same reason.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import NoReturn

import click

from geomsafe.artefacts import geomsafe_version
from geomsafe.errors import GeomsafeError

# name -> (module, command object, one-line help shown by `geomsafe --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "audit": (
        "geomsafe.cli.audit",
        "audit_cmd",
        "Where do harmful features sit relative to a fine-tuning target?",
    ),
    "bench": ("geomsafe.cli.bench", "bench_cmd", "The end-to-end benchmark table."),
    "diff": ("geomsafe.cli.diff", "diff_cmd", "What does a fine-tune move? Its drift as an atlas."),
    "evaluate": (
        "geomsafe.cli.evaluate",
        "evaluate",
        "Toxic-output rate, over-refusal, trait probes and log-odds, before vs after.",
    ),
    "finetune": (
        "geomsafe.cli.finetune",
        "finetune",
        "LoRA fine-tuning with geometric guards against harmful-feature drift.",
    ),
    "firewall": (
        "geomsafe.cli.firewall",
        "firewall_group",
        "Inference firewall: calibrate thresholds, run prompts under it.",
    ),
    "info": ("geomsafe.cli.info", "info", "Layers, width, heads and chat template of a model."),
    "predict": (
        "geomsafe.cli.predict",
        "predict_cmd",
        "Will fine-tuning on this data set amplify harmful traits?",
    ),
    "report": ("geomsafe.cli.report", "report_cmd", "One self-contained HTML page for a folder."),
    "serve": (
        "geomsafe.cli.firewall",
        "serve_cmd",
        "OpenAI-compatible chat server with the firewall active.",
    ),
    "toy": ("geomsafe.cli.toy", "toy", "Toy models of superposition and the entanglement run."),
}


def one_line(text: str) -> str:
    """A message on one line (click's multi-line usage errors included)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


class _Group(click.Group):
    """Loads commands lazily; turns GeomsafeError, click's usage errors and a few OS errors into
    one line on stderr and exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in self.list_commands(ctx)])

    def main(self, *args, **kwargs):  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("geomsafe: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            where = getattr(getattr(exc, "ctx", None), "command_path", "geomsafe")
            hint = f" (see '{where} --help')" if isinstance(exc, click.UsageError) else ""
            click.echo(f"geomsafe: error: {one_line(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)

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
        try:  # parsing imports the chosen command (and so torch): Ctrl-C there too
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
@click.version_option(geomsafe_version(), prog_name="geomsafe")
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
