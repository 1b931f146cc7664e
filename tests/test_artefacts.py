from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from geomsafe import __version__
from geomsafe.artefacts import (
    AUDIT_JSON,
    VERSIONS,
    atomic_write_text,
    format_tag,
    prepare_out,
    read_json,
    read_jsonl,
    write_json,
)
from geomsafe.errors import GeomsafeError


def test_write_json_stamps_and_reads_back(tmp_path):
    path = write_json(tmp_path / AUDIT_JSON, {"targets": [], "format": "old"}, "audit")
    data = json.loads(path.read_text())
    assert list(data)[:2] == ["format", "geomsafe_version"]
    assert data["format"] == "geomsafe.audit/2" and data["geomsafe_version"] == __version__
    assert read_json(path, "audit")["targets"] == []
    assert not list(tmp_path.glob(".*.tmp"))


def test_every_kind_has_a_tag():
    for kind, version in VERSIONS.items():
        assert format_tag(kind) == f"geomsafe.{kind}/{version}"
    with pytest.raises(ValueError):
        format_tag("nope")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"format": "geomsafe.eval/1"}', "not a geomsafe audit file .*geomsafe.eval/1"),
        ('{"format": "other-tool/3"}', "not a geomsafe audit file .*other-tool/3"),
        ('{"format": "geomsafe.audit/3"}', "written by a newer geomsafe"),
        ('{"kind": "predict"}', "kind 'predict'"),
        ("[1, 2]", "a JSON list, not an object"),
        ('"text"', "a JSON str, not an object"),
        ("{", "not valid JSON"),
        ("", "not valid JSON"),
    ],
)
def test_read_json_refuses_foreign_newer_and_wrong_shape(tmp_path, content, match):
    path = tmp_path / "audit.json"
    path.write_text(content)
    with pytest.raises(GeomsafeError, match=match) as info:
        read_json(path, "audit")
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_read_json_refuses_binary_and_non_utf8(tmp_path):
    png = tmp_path / "a.json"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(GeomsafeError, match="binary file"):
        read_json(png, "audit")
    latin = tmp_path / "b.json"
    latin.write_bytes('{"targets": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(
        GeomsafeError, match=r"b.json:1: not UTF-8 text \(invalid continuation byte at byte 17 "
    ):
        read_json(latin, "audit")
    with pytest.raises(GeomsafeError, match="not found"):
        read_json(tmp_path / "missing.json", "audit")


def test_unstamped_file_of_an_older_geomsafe_is_read(tmp_path):
    path = tmp_path / "audit.json"
    path.write_text('{"kind": "audit", "targets": []}')
    assert read_json(path, "audit")["targets"] == []


def test_read_jsonl_names_the_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n\n{bad\n')
    with pytest.raises(GeomsafeError, match="log.jsonl:3"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_prepare_out_refuses_a_used_folder_and_names_its_content(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "audit.json").write_text("{}")
    (out / "atlas").mkdir()
    (out / "atlas" / "atlas.json").write_text("{}")
    with pytest.raises(GeomsafeError, match=r"not empty \(holds audit.json \(audit\), atlas/"):
        prepare_out(out, "predict")
    (tmp_path / "file").write_text("x")
    with pytest.raises(GeomsafeError, match="is a file"):
        prepare_out(tmp_path / "file", "audit")
    prepare_out(tmp_path / "new" / "deeper", "audit")  # a missing folder is fine
    assert not (tmp_path / "new").exists()  # and nothing is created before the work


def test_writing_replaces_the_folder_as_one_set(tmp_path):
    out = tmp_path / "out"
    with prepare_out(out, "audit").writing() as work:
        atomic_write_text(work / "a.txt", "one")
        assert not out.exists()  # nothing in --out until the set is complete
    assert (out / "a.txt").read_text() == "one"
    folder = prepare_out(out, "audit", overwrite=True)
    with pytest.raises(RuntimeError), folder.writing() as work:
        atomic_write_text(work / "b.txt", "half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # the old set stays whole
    with folder.writing() as work:
        atomic_write_text(work / "b.txt", "two")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # no stale file beside it
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no work folders left


def test_writing_rechecks_the_folder(tmp_path):
    out = tmp_path / "out"
    folder = prepare_out(out, "eval")
    out.mkdir()
    (out / "eval.json").write_text("{}")  # another run finished meanwhile
    with pytest.raises(GeomsafeError, match="not empty"), folder.writing():
        pass
    assert (out / "eval.json").read_text() == "{}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_prepare_out_refuses_a_read_only_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(GeomsafeError, match="not writable"):
            prepare_out(Path(ro) / "out", "audit")
    finally:
        ro.chmod(0o755)
