"""`geomsafe toy`: toy models of superposition and the entanglement experiment."""

from __future__ import annotations

from pathlib import Path

import click

from geomsafe.cli.common import common_options, print_table
from geomsafe.errors import GeomsafeError

_ROWS = (
    ("polygons_dense_represented", "m=2 polygons: features kept, dense (S=0)"),
    ("polygons_sparsest_represented", "m=2 polygons: features kept, sparsest"),
    ("polygons_sparsest_mean_D", "m=2 polygons: mean dimensionality, sparsest"),
    ("dims_per_feature_dense", "sweep: dimensions per feature, dense"),
    ("dims_per_feature_sparsest", "sweep: dimensions per feature, sparsest"),
    ("phase_superposition_share", "phase diagram: share of cells in superposition"),
    ("collateral_pearson", "collateral vs cosine: Pearson"),
    ("collateral_spearman", "collateral vs cosine: Spearman"),
    ("protected_collateral_free", "protected collateral, no guard"),
    ("protected_collateral_guarded", "protected collateral, guard"),
    ("target_gain_free", "target gain, no guard"),
    ("target_gain_guarded", "target gain, guard"),
    ("target_gain_kept", "target gain kept by the guard"),
    ("guard_overhead_ratio", "fine-tune time, guard / no guard"),
    ("total_s", "total seconds"),
)


@click.command("toy")
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Output folder for toy.json and the figures (PNG + SVG).",
)
@click.option("--quick", is_flag=True, help="Small grids and few steps (seconds; for tests).")
# no --threads: the toy models train on one torch thread by design (toy.train.single_thread)
@common_options("overwrite", "seed", "no_progress")
def toy(out: Path, quick: bool, overwrite: bool, seed: int, no_progress: bool) -> None:
    """Toy models of superposition: polygons, sparsity sweep, phase diagram, entanglement."""
    from geomsafe.toy import toy as run_toy

    if seed < 0:
        raise GeomsafeError(f"--seed must be >= 0, got {seed}")
    result = run_toy(out, seed=seed, quick=quick, progress=not no_progress, overwrite=overwrite)
    numbers = result.headline()
    rows = [[label, _tidy(numbers[key])] for key, label in _ROWS]
    print_table(["quantity", "value"], rows)
    click.echo(f"wrote {len(result.files)} files to {result.out_dir}")


def _tidy(value: float) -> float:
    """Round-off (|x| < 5e-4) shown as 0.000, not -0.000."""
    return 0.0 if abs(value) < 5e-4 else value
