from __future__ import annotations

import pytest

from geomsafe.errors import GeomsafeError
from geomsafe.options import parse_layers, split_csv


def test_split_csv():
    assert split_csv(None) == [] and split_csv("") == [] and split_csv(" , ") == []
    assert split_csv(" a, b,,c ") == ["a", "b", "c"]
    assert split_csv(["a ", "", " b"]) == ["a", "b"]
    assert split_csv(("x",)) == ["x"]


def test_parse_layers():
    assert parse_layers(None) is None and parse_layers("") is None and parse_layers("best") is None
    assert parse_layers("3, 4,5") == [3, 4, 5] and parse_layers("3:6") == [3, 4, 5]
    assert parse_layers([1, 2]) == [1, 2]
    for bad in ("a-b", "3:x", "5:5"):
        with pytest.raises(GeomsafeError, match="bad layers"):
            parse_layers(bad)
