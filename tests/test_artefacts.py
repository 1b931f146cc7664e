from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

import geomsafe
from geomsafe import __version__
from geomsafe.artefacts import (
    AUDIT_JSON,
    VERSIONS,
    atomic_write_text,
    format_tag,
    geomsafe_version,
    jsonl_text,
    prepare_out,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
    write_plain_json,
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


# ---- convention: JSON files are written only through this module ------------------------------
#: (module path under src/geomsafe, function) -> why its json.dumps is no file written here.
#: A function named here may call json.dumps; nothing else outside artefacts.py may.
JSON_ALLOWED = {
    ("datasets.py", "from_examples"): "an in-memory example's raw line (written by predict's "
    "filter through artefacts.atomic_write_text)",
    ("firewall/screening.py", "_text"): "a chat prompt as one string, to match rows by text",
    ("firewall/serve.py", "chunk"): "an HTTP server-sent-event body, not a file",
    ("firewall/serve.py", "_stream"): "an HTTP server-sent-event body, not a file",
    ("cli/info.py", "info"): "printed to stdout",
    ("train/trainer.py", "*"): "the geometry log is a JSONL stream appended at each logging step",
    ("pareto/grid.py", "*"): "experiment code, moving to experiments/lib (issue 29)",
    ("pareto/run.py", "*"): "experiment code, moving to experiments/lib (issue 29)",
}
_SRC = Path(geomsafe.__file__).parent


def _json_writes(tree: ast.AST) -> list[tuple[str, int, str]]:
    """(function, line, what) for each json.dump/json.dumps call not hashed at once
    (``json.dumps(...).encode()``), and each write_text/open of a ``*.json``/``*_JSON`` path."""
    found: list[tuple[str, int, str]] = []

    def names_json(node: ast.AST) -> bool:
        for n in ast.walk(node):
            text = n.value if isinstance(n, ast.Constant) else None
            if isinstance(text, str) and text.endswith((".json", ".jsonl")):
                return True
            if isinstance(n, ast.Name | ast.Attribute):
                name = n.id if isinstance(n, ast.Name) else n.attr
                if name.endswith(("_JSON", "_JSONL", "_META")):
                    return True
        return False

    def visit(node: ast.AST, func: str, parent: ast.AST | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            func = node.name
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if isinstance(f.value, ast.Name) and f.value.id == "json":
                hashed = isinstance(parent, ast.Attribute) and parent.attr == "encode"
                if f.attr == "dump" or (f.attr == "dumps" and not hashed):
                    found.append((func, node.lineno, f"json.{f.attr}"))
            if f.attr in ("write_text", "write_bytes") and names_json(f.value):
                found.append((func, node.lineno, f.attr))
        opened = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        if opened and node.func.id == "open" and node.args and names_json(node.args[0]):
            modes = [*node.args[1:2], *(k.value for k in node.keywords)]
            if any(isinstance(m, ast.Constant) and set(str(m.value)) & set("wax") for m in modes):
                found.append((func, node.lineno, "open"))
        for child in ast.iter_child_nodes(node):
            visit(child, func, node)

    visit(tree, "<module>", None)
    return found


def test_only_artefacts_writes_json_files():
    bad = []
    for path in sorted(_SRC.rglob("*.py")):
        rel = path.relative_to(_SRC).as_posix()
        if rel == "artefacts.py":
            continue
        for func, line, what in _json_writes(ast.parse(path.read_text(encoding="utf-8"))):
            if (rel, func) not in JSON_ALLOWED and (rel, "*") not in JSON_ALLOWED:
                bad.append(f"{rel}:{line} {func}: {what}")
    assert not bad, "write JSON through geomsafe.artefacts (write_json, write_plain_json, " \
        "write_jsonl, jsonl_text):\n" + "\n".join(bad)


def test_the_json_convention_check_finds_writes():
    code = '''
import json
def ok(x):
    return hashlib.sha256(json.dumps(x).encode()).hexdigest()
def bad(path, x):
    path.write_text(json.dumps(x))
def bad2(folder, x):
    with open(folder / "a.json", "w") as fh:
        fh.write("{}")
def bad3(folder):
    (folder / RUN_JSON).write_text("{}")
def fine(folder):
    with open(folder / "a.json") as fh:
        return fh.read()
'''
    found = _json_writes(ast.parse(code))
    assert [(f, w) for f, _, w in found] == [("bad", "json.dumps"), ("bad2", "open"),
                                             ("bad3", "write_text")]


def test_plain_json_and_jsonl_writers(tmp_path):
    path = write_plain_json(tmp_path / "lock.json", {"pid": 1, "name": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"pid": 1, "name": "é"}
    assert "format" not in path.read_text()  # unstamped: not a result
    rows = [{"a": 1}, [2, 3], "x"]
    assert jsonl_text(rows) == '{"a": 1}\n[2, 3]\n"x"\n' and jsonl_text([]) == ""
    out = write_jsonl(tmp_path / "g.jsonl", iter(rows))
    assert read_jsonl(out) == rows
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_the_version_is_read_in_one_place():
    assert geomsafe_version() == __version__
    readers = []
    for path in sorted(_SRC.rglob("*.py")):
        rel = path.relative_to(_SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            named = isinstance(node, ast.Attribute) and node.attr == "__version__"
            imported = isinstance(node, ast.ImportFrom) and node.module == "geomsafe"
            if named and isinstance(node.value, ast.Name) and node.value.id == "geomsafe":
                readers.append(rel)
            if imported and any(a.name == "__version__" for a in node.names):
                readers.append(rel)
    assert readers == ["artefacts.py"], "use geomsafe.artefacts.geomsafe_version()"
