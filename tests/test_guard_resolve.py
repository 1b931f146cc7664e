from __future__ import annotations

import pytest

from geomsafe.concepts import builtin_names
from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig, MonitorGuard, ProjectionGuard, build_guards
from geomsafe.guard import resolve as resolve_module
from geomsafe.guard.resolve import resolve_guards, split_guards
from geomsafe.testing import tiny_model
from guard_helpers import N_LAYERS, WIDTH, custom_guard_kind, random_atlas

TEMPLATE = "base_model.model.model.layers.{num}"


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", n_layers=N_LAYERS, width=WIDTH)


def test_split_guards_names_and_objects():
    (obj,) = build_guards("steer", random_atlas())
    assert split_guards(None) == ([], [])
    assert split_guards(" projection,STEER,projection") == (["projection", "steer"], [])
    assert split_guards(["covariance", obj]) == (["covariance"], [obj])
    assert split_guards(obj) == ([], [obj])
    with pytest.raises(GeomsafeError, match="unknown guard 'nope'; use one of orthogonal"):
        split_guards("steer,nope")
    with pytest.raises(GeomsafeError, match="not a guard: 3"):
        split_guards(["steer", 3])


def test_resolve_with_an_atlas(lm):
    atlas = random_atlas()
    (obj,) = build_guards("steer", atlas)
    config = GuardConfig(weight=4.0)
    setup = resolve_guards(lm, ["projection", obj], "dec", atlas, config, layer_template=TEMPLATE)
    assert setup.kinds == ["projection"] and setup.names == ["projection", "steer"]
    assert setup.concepts == ["dec"] and setup.atlas is atlas and not setup.extracted
    assert setup.config == GuardConfig(concepts=["dec"], weight=4.0) and config.concepts is None
    built = setup.guards[0]
    assert isinstance(built, ProjectionGuard) and built.layer_template == TEMPLATE
    assert [p.names for p in built.plans] == [["dec"]] and built.config.weight == 4.0
    assert isinstance(setup.monitor, MonitorGuard) and setup.guards[1] is obj
    assert setup.monitor.layer_template == TEMPLATE
    # no guard kinds: the atlas's harmful concepts are monitored
    plain = resolve_guards(lm, atlas=atlas)
    assert plain.guards == [] and plain.config is None and plain.concepts == ["tox", "dec"]
    assert [p.names for p in plain.monitor.plans] == [["tox", "dec"]]
    assert resolve_guards(lm).monitor is None


def test_one_check_for_missing_directions(lm):
    atlas = random_atlas()
    message = "atlas has no direction for hate \\(it has: tox, dec, help, code\\)"
    for guard in (None, "steer"):
        with pytest.raises(GeomsafeError, match=message):
            resolve_guards(lm, guard, "tox,hate", atlas)
    with pytest.raises(GeomsafeError, match="no guarded concepts"):
        resolve_guards(lm, "steer", atlas=atlas.select(["help"]))
    with pytest.raises(GeomsafeError, match="guards by name need an atlas"):
        resolve_guards(lm, "steer", extract=False)


def test_atlas_extracted_for_the_kinds_that_need_it(lm, monkeypatch):
    calls = []

    def fake_extract(lm, concepts, targets=(), *, layers=None, **kwargs):
        calls.append((list(concepts), list(targets), layers))
        return random_atlas(harmful=concepts, targets=targets or ["help"])

    monkeypatch.setattr(resolve_module, "extract_atlas", fake_extract)
    setup = resolve_guards(lm, "projection", "tox")
    assert calls[-1] == (["tox"], [], None) and setup.extracted and setup.concepts == ["tox"]
    resolve_guards(lm, "covariance", "tox", guard_config=GuardConfig(layers=[0, 1]))
    assert calls[-1] == (["tox"], builtin_names("target"), [0, 1])
    resolve_guards(lm, "covariance", guard_config=GuardConfig(["dec"], targets=["help"]))
    assert calls[-1] == (["dec"], ["help"], None)
    setup = resolve_guards(lm, "steer")
    assert calls[-1][0] == builtin_names("harmful") == setup.concepts
    with custom_guard_kind("square") as cls:  # a registered kind that records targets too
        cls.with_targets = True
        resolve_guards(lm, "square", "tox")
        assert calls[-1][1] == builtin_names("target")
    assert len(calls) == 5
