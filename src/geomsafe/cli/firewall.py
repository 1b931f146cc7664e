"""`geomsafe firewall calibrate|run` and `geomsafe serve`: the inference firewall."""

from __future__ import annotations

import click

from geomsafe.cli.common import common_options, config_option, model_option, print_table
from geomsafe.config import default_of, help_of
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.generate import SamplingConfig
from geomsafe.firewall.calibration import CalibrationConfig
from geomsafe.firewall.config import MODES
from geomsafe.options import split_csv

_C = CalibrationConfig()

data_root_option = click.option(
    "--data-root", type=click.Path(), help="Public data folder (default: ../shared/data)."
)
adapter_option = click.option("--adapter", type=click.Path(), help="peft LoRA adapter folder.")
refusal_option = click.option(
    "--refusal", help="Text of a blocked answer (default: the firewall's)."
)
firewall_option = click.option(
    "--firewall",
    "firewall_path",
    required=True,
    type=click.Path(),
    help="A calibrated firewall folder (from `geomsafe firewall calibrate`).",
)


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(split_csv(text))
    if not names:
        raise GeomsafeError("an empty list was given")
    return names


def _layers(text: str | None) -> tuple[int, ...] | None:
    names = _names(text)
    if names is None:
        return None
    try:
        return tuple(int(x) for x in names)
    except ValueError as exc:
        raise GeomsafeError(f"--layers must be comma-separated integers, not {text!r}") from exc


@click.group("firewall")
def firewall_group() -> None:
    """Inference firewall: calibrate thresholds on benign traffic, run prompts under it."""


@firewall_group.command("calibrate")
@model_option
@adapter_option
@click.option(
    "--atlas", type=click.Path(), help="FeatureAtlas folder (an audit): its harmful concepts."
)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output folder.")
@config_option(CalibrationConfig, "fpr", type=float)
@click.option("--concepts", help=help_of(CalibrationConfig, "concepts"))
@click.option("--layers", help=help_of(CalibrationConfig, "layers"))
@config_option(CalibrationConfig, "request", "--request/--no-request")
@config_option(CalibrationConfig, "request_layer", type=int)
@config_option(CalibrationConfig, "requests", type=click.Path())
@config_option(CalibrationConfig, "share", type=float)
@config_option(CalibrationConfig, "fit_share", type=float)
@config_option(CalibrationConfig, "max_per_source", type=int)
@config_option(CalibrationConfig, "xstest", "--xstest/--no-xstest")
@config_option(CalibrationConfig, "batch_size", type=int)
@config_option(CalibrationConfig, "max_length", type=int)
@config_option(CalibrationConfig, "refusal")
@data_root_option
@common_options(
    "overwrite", "seed", "threads", "no_progress", seed=default_of(CalibrationConfig, "seed")
)
def calibrate_cmd(
    model,
    adapter,
    atlas,
    out,
    overwrite,
    concepts,
    layers,
    data_root,
    threads,
    no_progress,
    **options,
):
    """Set per-check thresholds on benign traffic for a target false-positive rate."""
    from geomsafe.firewall.calibration import calibrate

    fw = calibrate(
        model,
        out=out,
        atlas=atlas,
        adapter=adapter,
        data_root=data_root,
        progress=not no_progress,
        overwrite=overwrite,
        concepts=_names(concepts),
        layers=_layers(layers),
        **options,
    )
    rows = [
        [
            c.key,
            c.tokens,
            c.threshold,
            c.benign_mean,
            c.benign_std,
            len(fw.calibration["stats"][c.key]),
        ]
        for c in fw.checks
    ]
    print_table(["check", "reads", "threshold", "benign mean", "benign sd", "n"], rows)
    cal = fw.calibration
    click.echo(
        f"\nbenign calibration sequences flagged: {cal['fpr_achieved']:.3f} "
        f"(target {cal['fpr_target']}, shared quantile {cal['q']:.4f}, n={cal['n_sequences']})"
    )
    for note in cal.get("notes", []):
        click.echo(f"note: {note}")
    click.echo(f"{cal['seconds']:.1f} s; wrote {out}")


@firewall_group.command("run")
@model_option
@adapter_option
@firewall_option
@click.option(
    "--prompts",
    default="builtin",
    show_default=True,
    help="builtin, rtp, em, xstest, xstest-unsafe or a .jsonl/.yaml/.csv file; comma-separated.",
)
@click.option("--n-prompts", type=int, default=0, show_default=True, help="0: all.")
@click.option("--mode", type=click.Choice(MODES), default="monitor", show_default=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output folder.")
@config_option(SamplingConfig, "samples_per_prompt", type=int, default=1)
@config_option(SamplingConfig, "max_new_tokens", type=int, default=64)
@config_option(SamplingConfig, "temperature", type=float, default=0.0)
@config_option(SamplingConfig, "top_p", type=float, default=1.0)
@config_option(SamplingConfig, "batch_size", type=int, default=8)
@refusal_option
@data_root_option
@common_options("overwrite", "seed", "threads", "no_progress", seed=0)
def run_cmd(
    model, firewall_path, prompts, n_prompts, mode, out, overwrite, threads, no_progress, **kw
):
    """Generate answers to a prompt set under the firewall; write generations and scores."""
    from geomsafe.firewall.screening import run

    names = ("samples_per_prompt", "max_new_tokens", "temperature", "top_p", "batch_size", "seed")
    sampling = SamplingConfig(**{k: kw.pop(k) for k in names})
    if n_prompts < 0:
        raise GeomsafeError(f"--n-prompts must be >= 0, not {n_prompts}")
    result = run(
        model,
        firewall_path,
        prompts,
        mode,
        out,
        sampling=sampling,
        n_prompts=n_prompts or None,
        progress=not no_progress,
        overwrite=overwrite,
        **kw,
    )
    s = result.summary()
    print_table(
        ["mode", "responses", "blocked", "flagged (prompt / response)", "clamped responses"],
        [
            [
                s["mode"],
                s["n_responses"],
                s["n_blocked"],
                f"{s['n_flagged']} ({s['n_flagged_prompt']} / {s['n_flagged_response']})",
                s["n_clamped_responses"],
            ]
        ],
    )
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"\n{result.seconds:.1f} s; wrote {out}")


@click.command("serve")
@model_option
@adapter_option
@firewall_option
@click.option("--mode", type=click.Choice(MODES), default="block", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--model-name", help="The model id clients use (default: the model spec).")
@click.option("--max-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True)
@refusal_option
@common_options("seed", "threads", seed=0)
def serve_cmd(model, adapter, firewall_path, host, port, threads, **options) -> None:
    """OpenAI-compatible /v1/chat/completions and /v1/models with the firewall active."""
    try:
        from geomsafe.firewall.serve import ServeConfig, serve
    except ImportError as exc:
        raise GeomsafeError(
            f"serving needs the 'serve' extra (pip install 'geomsafe[serve]'): {exc}"
        ) from exc
    if not 0 <= port <= 65535:
        raise GeomsafeError(f"--port must be in [0, 65535], not {port}")
    config = ServeConfig(**options)
    serve(model, firewall_path, adapter=adapter, host=host, port=port, config=config)
