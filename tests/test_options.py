from __future__ import annotations

from geomsafe.options import split_csv


def test_split_csv():
    assert split_csv(None) == [] and split_csv("") == [] and split_csv(" , ") == []
    assert split_csv(" a, b,,c ") == ["a", "b", "c"]
    assert split_csv(["a ", "", " b"]) == ["a", "b"]
    assert split_csv(("x",)) == ["x"]
