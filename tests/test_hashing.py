from __future__ import annotations

import hashlib
import json

import torch

from geomsafe.atlas import FeatureAtlas
from geomsafe.hashing import file_sha256, rows_sha256


def test_file_sha256_is_the_hash_of_the_bytes(tmp_path):
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert file_sha256(path) == file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


def test_rows_sha256_hashes_each_row_as_its_json_list():
    rows = [("a", "b", None), ("c", "d", "é")]
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(list(r)).encode())
    assert rows_sha256(rows) == rows_sha256(iter([list(r) for r in rows])) == h.hexdigest()
    assert rows_sha256(rows[::-1]) != rows_sha256(rows)  # order matters
    assert rows_sha256([]) == hashlib.sha256().hexdigest()


def test_atlas_sha256_covers_names_and_float32_directions():
    torch.manual_seed(0)
    dirs = {"a": torch.randn(2, 4), "b": torch.randn(2, 4)}
    atlas = FeatureAtlas([0, 1], dirs, {"a": "harmful", "b": "target"})
    h = hashlib.sha256()
    for n in ("a", "b"):
        h.update(n.encode())
        h.update(dirs[n].float().numpy().tobytes())
    assert atlas.sha256() == atlas.sha256(["a", "b"]) == h.hexdigest()
    assert atlas.sha256(["a"]) != atlas.sha256()
    assert atlas.to(torch.float16).sha256() != atlas.sha256()  # the float32 view of the stored rows
    moved = FeatureAtlas([0, 1], {**dirs, "a": dirs["a"] + 1e-3}, atlas.kinds)
    assert moved.sha256(["b"]) == atlas.sha256(["b"]) and moved.sha256() != atlas.sha256()
