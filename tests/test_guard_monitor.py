from __future__ import annotations

import pytest

from geomsafe.guard import GUARDS, MonitorGuard
from guard_helpers import assistant_mean, make_batch, peft_llama, random_atlas, residuals

pytestmark = pytest.mark.usefixtures("one_thread")


def test_monitor_records_each_concept_at_its_best_layer():
    atlas = random_atlas()
    atlas.stats["dec"]["best_layer"] = 0
    model, batch = peft_llama(), make_batch()
    monitor = MonitorGuard(atlas, ["tox", "dec"])
    assert [(p.layer, p.names) for p in monitor.plans] == [(0, ["dec"]), (1, ["tox"])]
    with monitor.install(model):
        model(**batch)
    assert monitor.penalty(model, batch) is None
    monitor.after_step(model)
    hidden = residuals(model, batch)
    assert monitor.log() == pytest.approx(
        {
            "proj/tox": assistant_mean(hidden[1], batch, atlas.direction("tox", 1)),
            "proj/dec": assistant_mean(hidden[0], batch, atlas.direction("dec", 0)),
        },
        rel=1e-5,
    )
    assert "monitor" not in GUARDS  # nobody has to ask for it
