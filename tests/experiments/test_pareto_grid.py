"""The grid's cells, what each strength sets, and the resumable cell store."""

from __future__ import annotations

import pytest

from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig
from lib.pareto.grid import LEVELS, STRENGTHS, Cell, CellStore, cells, guard_config


def test_cells_put_the_unguarded_run_first_per_data_set():
    grid = cells(["insecure", "task:code"], ["ablate", "steer"], ["low", "high"])
    assert [c.key for c in grid[:5]] == [
        "insecure|none@-",
        "insecure|ablate@low",
        "insecure|ablate@high",
        "insecure|steer@low",
        "insecure|steer@high",
    ]
    assert len(grid) == 10 and not grid[5].guarded and grid[5].dataset == "task:code"
    assert len({c.filename for c in grid}) == 10
    assert Cell("concept:dangerous_advice", "ablate", "mid").filename == (
        "concept-dangerous_advice--ablate--mid.json"
    )


def test_cells_reject_unknown_names():
    with pytest.raises(GeomsafeError, match="unknown guard"):
        cells(["x"], ["nope"], ["mid"])
    with pytest.raises(GeomsafeError, match="unknown strength"):
        cells(["x"], ["ablate"], ["max"])
    with pytest.raises(GeomsafeError, match="at least one data set"):
        cells([], ["ablate"], ["mid"])


def test_an_extra_level_runs_only_for_its_guards():
    grid = cells(["jb"], ["ablate", "projection"], ["low", "one-sided"])
    assert [c.key for c in grid] == [
        "jb|none@-",
        "jb|ablate@low",
        "jb|projection@low",
        "jb|projection@one-sided",
    ]
    with pytest.raises(GeomsafeError, match="unknown strength 'one-sided'"):
        cells(["jb"], ["ablate"], ["one-sided"])
    made = guard_config("projection", "one-sided", GuardConfig(), [3])
    assert made.projection_mode == "increase" and made.weight == 1.0
    made = guard_config("projection", "one-sided-high", GuardConfig(), [3])
    assert made.projection_mode == "increase" and made.weight == 10.0
    made = guard_config("projection", "one-sided-band", GuardConfig(), [3, 4, 5])
    assert made.projection_mode == "increase" and made.weight == 1.0
    assert made.layers == [3, 4, 5]
    made = guard_config("ablate", "pilot", GuardConfig(), [3])
    assert made.source == "pilot" and made.layers is None
    with pytest.raises(GeomsafeError, match="unknown strength 'pilot'"):
        cells(["jb"], ["projection"], ["pilot"])


@pytest.mark.parametrize("guard", list(STRENGTHS))
def test_every_guard_has_three_valid_and_distinct_strengths(guard):
    base = GuardConfig(concepts=["toxicity"])
    made = [guard_config(guard, s, base, [3, 4, 5]) for s in LEVELS]
    assert len({repr(c) for c in made}) == 3
    assert all(c.concepts == ["toxicity"] for c in made)


def test_strength_values():
    base = GuardConfig()
    assert guard_config("ablate", "high", base, [3, 4]).layers == [3, 4]
    assert guard_config("ablate", "low", base, [3]).schedule == "front"
    assert guard_config("projection", "high", base, [3]).weight == 10.0
    assert guard_config("steer", "low", base, [3]).steer_coeff == 0.05
    assert guard_config("orthogonal", "high", base, [3]).orthogonal_scope == "upto"


def test_store_resumes_only_matching_cells(tmp_path):
    store = CellStore(tmp_path)
    cell = Cell("insecure", "ablate", "mid")
    assert store.load(cell, "fp1") is None
    store.save(cell, "fp1", {"heldout_loss": 1.5})
    got = store.load(cell, "fp1")
    assert got["heldout_loss"] == 1.5 and got["cell"]["guard"] == "ablate"
    assert not [p for p in (tmp_path / "cells").iterdir() if p.name.startswith(".")]
    with pytest.raises(GeomsafeError, match="other settings"):
        store.load(cell, "fp2")
    store.path(cell).write_text("{not json")
    with pytest.raises(GeomsafeError, match="not a readable cell file"):
        store.load(cell, "fp1")
