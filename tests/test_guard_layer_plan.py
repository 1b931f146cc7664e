from __future__ import annotations

import pytest
import torch

from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig
from geomsafe.guard.layer_plan import layer_plans
from guard_helpers import WIDTH, random_atlas


def test_plans_group_concepts_by_best_layer_or_band():
    atlas = random_atlas()
    atlas.stats["dec"]["best_layer"] = 2
    plans = layer_plans(atlas, GuardConfig())  # every harmful concept at its best layer
    assert [(p.layer, p.names, p.targets) for p in plans] == [
        (1, ["tox"], None),
        (2, ["dec"], None),
    ]
    torch.testing.assert_close(plans[0].directions, atlas.matrix(1, ["tox"]))
    band = layer_plans(atlas, GuardConfig(["dec", "tox"], layers=[2, 0, 2]))
    assert [(p.layer, p.names) for p in band] == [(0, ["dec", "tox"]), (2, ["dec", "tox"])]


def test_targets_follow_the_harmful_rows():
    atlas = random_atlas()
    (plan,) = layer_plans(atlas, GuardConfig(["tox"]), with_targets=True)
    assert plan.target_names == ["help", "code"]
    torch.testing.assert_close(plan.directions, atlas.matrix(1, ["tox", "help", "code"]))
    (plan,) = layer_plans(atlas, GuardConfig(["tox"], targets=["code"]), with_targets=True)
    assert plan.target_names == ["code"] and plan.directions.shape == (2, WIDTH)


def test_bad_concepts_layers_and_targets():
    atlas = random_atlas()
    bad = [
        (GuardConfig(["tox", "nope"]), "atlas has no direction for nope \\(it has: tox, dec,"),
        (GuardConfig(["tox"], layers=[7]), "guard layers \\[7\\] are not in the atlas"),
        (GuardConfig(["tox"], targets=["nope"]), "no target direction for nope"),
    ]
    for config, message in bad:
        with pytest.raises(GeomsafeError, match=message):
            layer_plans(atlas, config, with_targets=True)
    with pytest.raises(GeomsafeError, match="needs target directions"):
        layer_plans(atlas.select(["tox", "dec"]), GuardConfig(), with_targets=True)
    with pytest.raises(GeomsafeError, match="no guarded concepts"):
        layer_plans(atlas.select(["help"]), GuardConfig())
