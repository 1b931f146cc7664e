from __future__ import annotations

import pytest
import torch

from geomsafe.diff.shifts import principal_shifts
from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig, PilotConfig, build_guards
from geomsafe.guard.pilot import PilotDirections, null_band, select_shifts
from guard_helpers import WIDTH, random_atlas, unit

N = 48


def anisotropic(seed: int = 0, n: int = N) -> torch.Tensor:
    """``[n, WIDTH]`` activations whose first two dimensions vary 20x more than the rest."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.ones(WIDTH)
    scale[:2] = 20.0
    return torch.randn(n, WIDTH, generator=g) * scale + 3.0


def shifted(base: torch.Tensor, direction: torch.Tensor, size: float = 2.0, seed: int = 1):
    """``base`` moved along ``direction`` (by ``size`` ± 20% per example) plus small noise."""
    g = torch.Generator().manual_seed(seed)
    amount = size * (1 + 0.2 * torch.randn(base.shape[0], 1, generator=g))
    return base + amount * direction + 0.05 * torch.randn(base.shape, generator=g)


def test_principal_shifts_find_the_shared_shift():
    base = anisotropic()
    u = random_atlas().direction("tox", 1)
    pcs, explained = principal_shifts(shifted(base, -u) - base, 3)
    assert pcs.shape == (3, WIDTH) and explained.shape == (3,)
    assert float(pcs[0] @ -u) > 0.99  # oriented along the mean shift
    assert float(explained[0]) > 0.95 and float(explained.sum()) <= 1.0 + 1e-6
    torch.testing.assert_close(pcs @ pcs.T, torch.eye(3), atol=1e-5, rtol=0)


def test_null_band_follows_the_anisotropy_and_is_seeded():
    base = anisotropic()
    loud = torch.zeros(2, WIDTH)
    loud[0, 0] = 1.0  # a high-variance dimension
    loud[1, 10] = 1.0  # a low-variance one
    band = null_band(base, loud, 500, 0.95, torch.Generator().manual_seed(0))
    again = null_band(base, loud, 500, 0.95, torch.Generator().manual_seed(0))
    assert torch.equal(band, again)
    # label-shuffled directions of anisotropic activations lean on the loud dimensions
    assert float(band[0]) > 0.5 > 0.2 > float(band[1]) > 0.0


def test_select_keeps_harmful_aligned_shifts_only():
    atlas = random_atlas()  # tox, dec harmful; help, code targets; best layer 1
    tox = atlas.direction("tox", 1)
    base = {1: anisotropic()}
    config = PilotConfig(pcs=2, draws=400)
    towards = select_shifts(base, {1: shifted(base[1], -tox)}, atlas, ["tox", "dec"], config)
    first = towards.components[0]
    assert first.name == "pc0_L1" and first.kept and first.concept == "tox"
    assert first.cosine > 0.99 and first.band < 0.5 and first.explained > 0.95
    assert towards.names == ["pc0_L1"]
    assert not towards.components[1].kept  # the noise around the shift
    pilot_atlas = towards.atlas
    assert pilot_atlas.harmful == ["pc0_L1"] and pilot_atlas.best_layer("pc0_L1") == 1
    # re-oriented towards the harmful side (the shift itself went along -tox)
    assert float(pilot_atlas.direction("pc0_L1", 1) @ tox) > 0.99
    assert pilot_atlas.provenance["kind"] == "pilot"
    # a shift orthogonal to every guarded direction is not kept
    other = torch.randn(WIDTH, generator=torch.Generator().manual_seed(5))
    harm = torch.stack([tox, atlas.direction("dec", 1)])
    q, _ = torch.linalg.qr(harm.T)
    other = unit(other - q @ (q.T @ other))
    away = select_shifts(base, {1: shifted(base[1], other)}, atlas, ["tox", "dec"], config)
    assert away.names == [] and away.atlas is None
    assert abs(away.components[0].cosine) < away.components[0].band
    assert "pc0_L1: |cos|" in away.summary() and "dropped" in away.summary()


def test_select_per_layer_concepts_allow_and_guards_on_the_result(tmp_path):
    atlas = random_atlas()
    tox0, dec2 = atlas.direction("tox", 0), atlas.direction("dec", 2)
    base = {0: anisotropic(0), 2: anisotropic(2)}
    tuned = {0: shifted(base[0], tox0), 2: shifted(base[2], dec2)}
    concepts = {0: ["tox"], 2: ["dec"]}
    pilot = select_shifts(base, tuned, atlas, concepts, PilotConfig(pcs=1), allow=["help"])
    assert pilot.names == ["pc0_L0", "pc0_L2"]
    assert [c.concept for c in pilot.components] == ["tox", "dec"]
    assert pilot.atlas.layers == [0, 2] and pilot.atlas.targets == ["help"]
    torch.testing.assert_close(pilot.atlas.direction("help", 2), atlas.direction("help", 2))
    assert sorted(pilot.shifts) == [0, 2] and pilot.shifts[0].shape == (1, WIDTH)
    config = GuardConfig(concepts=pilot.names, allow=["help"])
    (guard,) = build_guards(["ablate"], pilot.atlas, config)
    assert [(p.layer, p.names) for p in guard.plans] == [(0, ["pc0_L0"]), (2, ["pc0_L2"])]
    saved = PilotDirections.load(pilot.save(tmp_path / "pilot"))
    assert saved.names == pilot.names and saved.to_dict() == pilot.to_dict()
    torch.testing.assert_close(
        saved.atlas.direction("pc0_L2", 2), pilot.atlas.direction("pc0_L2", 2)
    )


def test_bad_pilot_input():
    atlas = random_atlas()
    base = {1: anisotropic()}
    for bad, message in [  # a bad config fails where it is made
        ({"steps": 0}, "pilot steps"),
        ({"heldout": 2}, "heldout"),
        ({"alpha": 1.0}, "alpha"),
    ]:
        with pytest.raises(GeomsafeError, match=message):
            PilotConfig(**bad)
    with pytest.raises(GeomsafeError, match="different layers"):
        select_shifts(base, {2: base[1]}, atlas, ["tox"])
    with pytest.raises(GeomsafeError, match="N >= 4"):
        select_shifts({1: base[1][:3]}, {1: base[1][:3]}, atlas, ["tox"])
    with pytest.raises(GeomsafeError, match="pilot"):
        GuardConfig(pilot=PilotConfig(pcs=0))
    with pytest.raises(GeomsafeError, match="guard source"):
        GuardConfig(source="sae").validate()


def test_a_shift_within_the_allowed_span_is_dropped():
    atlas = random_atlas()
    tox = atlas.direction("tox", 1)
    atlas.directions["help"][1] = unit(tox + 0.01 * atlas.direction("code", 1))
    base = {1: anisotropic()}
    tuned = {1: shifted(base[1], tox)}
    config = PilotConfig(pcs=1)
    free = select_shifts(base, tuned, atlas, ["tox"], config)
    assert free.names == ["pc0_L1"]
    allowed = select_shifts(base, tuned, atlas, ["tox"], config, allow=["help"])
    (comp,) = allowed.components
    assert not comp.kept and comp.note == "within the allowed span" and allowed.atlas is None
    assert abs(comp.cosine) > comp.band  # above its band, but the drift the allow-list keeps
