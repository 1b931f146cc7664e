from pathlib import Path

import pytest

from geomsafe.errors import GeomsafeError
from geomsafe.textfile import decode_text, json_lines, read_text


def test_utf8_with_and_without_bom_reads_the_same(tmp_path: Path):
    text = "caf\u00e9\nna\u00efve\n"
    (tmp_path / "a.txt").write_bytes(text.encode())
    (tmp_path / "b.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_text(tmp_path / "a.txt") == read_text(tmp_path / "b.txt") == text


@pytest.mark.parametrize(
    "data, where",
    [
        (b'{"a": 1}\n{"a": 2}\n{"a": "caf\xe9"}\n', "f:3: not UTF-8 text (invalid continuation"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "f:1: not UTF-8 text (invalid start byte at byte 1 "),
        (b"\xef\xbb\xbfok\nab\xff\n", "f:2: not UTF-8 text (invalid start byte at byte 3 "),
        ("one line".encode("utf-16"), "f:1: not UTF-8 text (invalid start byte at byte 1 "),
    ],
)
def test_bytes_that_are_not_utf8_name_the_line_and_byte(data: bytes, where: str):
    with pytest.raises(GeomsafeError) as info:
        decode_text(data, "f")
    assert str(info.value).startswith(where)
    assert "\n" not in str(info.value)


def test_read_text_names_the_file(tmp_path: Path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes("ok\nd\u00e9j\u00e0\n".encode("latin-1"))
    with pytest.raises(GeomsafeError, match=rf"^{path}:2: not UTF-8 text .* at byte 2 of the line"):
        read_text(path)


def test_json_lines_split_at_newlines_only_and_name_the_bad_line():
    text = '{"a": "x\u2028y"}\n\n{"a": 2}\r\n'
    assert [(n, o) for n, _, o in json_lines(text, "f")] == [(1, {"a": "x\u2028y"}), (3, {"a": 2})]
    with pytest.raises(GeomsafeError, match=r"^f:2: not valid JSON \(Expecting value, column 1\)"):
        list(json_lines('{"a": 1}\nnope\n', "f"))
