"""geomsafe.diff.config: DiffConfig checks every number when it is made."""

from __future__ import annotations

import pytest

from geomsafe.diff.config import DiffConfig
from geomsafe.errors import GeomsafeError


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(max_examples=0), "max_examples must be >= 1"),
        (dict(components=0), "components must be >= 1"),
        (dict(base_pcs=-1), "base_pcs must be >= 0"),
        (dict(remove="whiten"), "remove must be one of base_pcs, none"),
        (dict(tokens="last"), "tokens must be one of response, all"),
        (dict(layers="x"), "bad layers"),
        (dict(threads=0), "threads must be >= 1"),
        (dict(data=" "), "data must name a data set"),
        (dict(bogus=1), "unknown diff option"),
    ],
)
def test_bad_values_are_one_line_errors(options, message):
    with pytest.raises(GeomsafeError, match=message):
        DiffConfig().with_options(**options)


def test_text_values_parse_like_the_cli():
    cfg = DiffConfig(layers="2:5")
    assert cfg.layers == (2, 3, 4) and cfg.to_dict()["layers"] == [2, 3, 4]
    assert DiffConfig(layers="best").layers is None
