from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import geomsafe
from geomsafe.errors import GeomsafeError
from geomsafe.folder_lock import (
    FolderBusy,
    Holder,
    holder_path,
    lock_folder,
    lock_path,
    read_holder,
)

SRC = str(Path(geomsafe.__file__).resolve().parents[1])


def test_holder_is_written_while_held_and_removed_on_release(tmp_path: Path):
    out = tmp_path / "new" / "run"
    with lock_folder(out, command="geomsafe finetune --out run") as me:
        assert out.parent.is_dir() and not out.exists()
        assert read_holder(out) == me
        assert me.pid == os.getpid() and me.host == socket.gethostname()
        assert me.command == "geomsafe finetune --out run"
    assert not holder_path(out).exists() and not lock_path(out).exists()
    assert not out.parent.exists()  # nothing left behind, not even the folder made for it
    with lock_folder(out):  # and free again
        pass


def test_second_holder_gets_one_line_error_naming_the_first(tmp_path: Path):
    out = tmp_path / "run"
    with (
        lock_folder(out, command="geomsafe finetune A") as me,
        pytest.raises(FolderBusy) as err,
        lock_folder(out),
    ):
        pass
    msg = str(err.value)
    assert isinstance(err.value, GeomsafeError) and "\n" not in msg
    assert f"pid {me.pid} on {me.host}, started {me.started}: geomsafe finetune A" in msg


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path: Path):
    out = tmp_path / "run"
    code = (
        "import os, signal, sys\n"
        "from geomsafe.folder_lock import lock_folder\n"
        "with lock_folder(sys.argv[1], command='killed run'):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    stale = read_holder(out)  # left behind: the process never unwound
    assert stale is not None and stale.command == "killed run" and stale.alive() is False
    with (
        pytest.warns(UserWarning, match=rf"took over .*pid {stale.pid} .*not running"),
        lock_folder(out) as me,
    ):
        assert read_holder(out) == me
    assert not holder_path(out).exists()


def test_holder_alive_and_describe():
    me = Holder.me("x")
    assert me.alive() is True
    assert Holder(me.pid, "some-other-host", me.started, "x").alive() is None
    assert me.describe().startswith(f"pid {me.pid} on {me.host}, started ")


def test_unwritable_parent_is_a_one_line_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GeomsafeError, match="cannot lock --out"), lock_folder(blocker / "run"):
        pass
