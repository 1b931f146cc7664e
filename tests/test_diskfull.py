import errno
from pathlib import Path

import pytest
from safetensors import SafetensorError

from geomsafe.artefacts import atomic_write
from geomsafe.diskfull import disk_full_error, is_disk_full, writing
from geomsafe.errors import GeomsafeError

RUST_ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"


def _chained() -> BaseException:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("could not save the checkpoint") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    "exc, full",
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (SafetensorError(RUST_ENOSPC), True),
        (_chained(), True),
        (OSError(errno.EACCES, "Permission denied"), False),
        (ValueError("bad value"), False),
        (None, False),
    ],
)
def test_is_disk_full(exc, full):
    assert is_disk_full(exc) is full


def test_disk_full_error_names_the_file():
    assert str(disk_full_error("/x/risk.json")) == "no space left on device writing /x/risk.json"
    assert str(disk_full_error(None)) == "no space left on device"


def test_writing_converts_only_a_full_disk():
    full = "^no space left on device writing f.bin$"
    with pytest.raises(GeomsafeError, match=full), writing("f.bin"):
        raise SafetensorError(RUST_ENOSPC)
    with pytest.raises(PermissionError), writing("f.bin"):
        raise PermissionError(errno.EACCES, "Permission denied")


def test_atomic_write_on_a_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path: Path):
    def half_then_full(tmp: str) -> None:
        Path(tmp).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "audit.json"
    with pytest.raises(GeomsafeError, match=f"^no space left on device writing {target}$"):
        atomic_write(target, half_then_full)
    assert list(tmp_path.iterdir()) == []
