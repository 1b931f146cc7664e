from __future__ import annotations

from geomsafe.concepts import builtin_names
from geomsafe.evaluate.concept_map import SPEAKS_FOR, speaks_for
from geomsafe.evaluate.pairsets import NAMED_SETS
from geomsafe.evaluate.probes import DEFAULT_TRAITS


def test_every_default_row_speaks_for_a_known_concept_or_says_none_fits():
    atlas = set(builtin_names())
    rows = [f"logodds:{s}" for s in NAMED_SETS] + [f"trait:{t}" for t in DEFAULT_TRAITS]
    rows += ["trait:em_pivotal_tokens", "trait:em_single_letter", "toxic_rate"]
    for row in rows:
        concept = speaks_for(row)
        assert concept, row
        head = concept.split(" (")[0]
        assert head in atlas or head in (
            "general misalignment",
            "harmful compliance",
            "style control",
        ), row
        if head not in atlas:  # no single atlas concept: the closest one is named
            assert "closest: " in concept or head in ("style control", "general misalignment")
    assert speaks_for("logodds:advbench-controlled") == speaks_for("logodds:advbench")
    assert speaks_for("logodds:concept:toxicity") == "toxicity"
    assert speaks_for("trait:no-such-trait") is None and speaks_for("xstest_refusal") is None
    assert set(SPEAKS_FOR) >= set(rows)
