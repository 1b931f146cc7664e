"""One test per case of issue 17 item 5 about how a command ends when the user or the machine
stops it: Ctrl-C while the command line starts (reliability report cases X01/X02) and a full
disk while writing outputs (X10-X12). The Ctrl-C cases run the real command line in a
subprocess; the full-disk cases write into a real 64 KiB tmpfs (root only, skipped otherwise)
and, everywhere, through writers that raise what a full disk raises."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors import SafetensorError

import geomsafe
from geomsafe.cli import main
from geomsafe.testing import save_tiny
from reliability_helpers import DEFAULT_SIGINT, lines_of, one_error_line

SRC = Path(geomsafe.__file__).resolve().parents[1]
TORCH = re.compile(rb"\|\s+torch\b")  # -X importtime: a torch module was imported
RUST_ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"
# Ctrl-C at the moment transformers starts importing (as a real one lands during the imports)
CTRL_C_AT_IMPORT = """
import sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "transformers":
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
sys.argv[0] = "geomsafe"
from geomsafe.cli import main
main()
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("model"))


# --- Ctrl-C while starting (X01, X02) ---------------------------------------------------------


@pytest.mark.parametrize("command", [["info", "--model", "default"], ["finetune", "--help"]])
def test_ctrl_c_while_importing_is_one_line_and_exit_130(command: list[str]):
    proc = subprocess.run(
        [sys.executable, "-c", CTRL_C_AT_IMPORT, *command],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 130, proc.stderr
    assert lines_of(proc.stderr) == ["geomsafe: interrupted"], proc.stderr


def test_real_ctrl_c_during_the_imports_is_one_line_and_exit_130(model_dir: Path, tmp_path):
    """SIGINT as soon as torch has started importing (seen in ``-X importtime``'s lines)."""
    code = (
        DEFAULT_SIGINT
        + "import sys; sys.argv[0] = 'geomsafe'; from geomsafe.cli import main; main()"
    )
    args = [sys.executable, "-X", "importtime", "-c", code, "finetune", "--model", str(model_dir)]
    args += ["--data", str(_chat(tmp_path / "d.jsonl")), "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(args, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    err = bytearray()
    reader = threading.Thread(target=_drain, args=(proc, err))
    reader.start()
    deadline = time.monotonic() + 120
    while not TORCH.search(err) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
    reader.join(timeout=30)
    lines = [ln for ln in lines_of(err.decode()) if not ln.startswith("import time:")]
    assert proc.returncode == 130, err.decode()[-2000:]
    assert lines == ["geomsafe: interrupted"], lines
    assert not (tmp_path / "out").exists()


def _drain(proc: subprocess.Popen, into: bytearray) -> None:
    while chunk := proc.stderr.read1(4096):  # type: ignore[union-attr]
        into.extend(chunk)


def test_ctrl_c_while_parsing_is_one_line_and_exit_130(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(main), "parse_args", interrupted)
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 130 and lines_of(result.output) == ["geomsafe: interrupted"]


# --- a full disk (X10-X12) --------------------------------------------------------------------


def test_a_full_disk_that_no_writer_caught_is_one_line(monkeypatch, model_dir: Path):
    def full(*args, **kwargs):
        raise SafetensorError(RUST_ENOSPC)

    monkeypatch.setattr("geomsafe.cli.info.load", full)
    result = CliRunner().invoke(main, ["info", "--model", str(model_dir)])
    one_error_line(result, "no space left on device")


def test_audit_atlas_write_on_a_full_disk_is_one_line(monkeypatch, model_dir: Path, tmp_path):
    def full(tensors, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise SafetensorError(RUST_ENOSPC)

    monkeypatch.setattr("geomsafe.atlas.save_file", full)
    out = tmp_path / "a"
    args = ["audit", "--model", str(model_dir), "--out", str(out), "--max-pairs", "8"]
    result = CliRunner().invoke(main, args + ["--n-perm", "10", "--n-boot", "10", "--no-heads"])
    one_error_line(result, "no space left on device writing", "atlas.safetensors")
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """A 64 KiB tmpfs with 8 KiB left (root with mount rights only)."""
    root = tmp_path_factory.mktemp("full")
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root)]
    try:
        mounted = subprocess.run(mount, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()[:80]}")
    try:
        free = os.statvfs(root)
        (root / "filler").write_bytes(bytes(max(0, free.f_bavail * free.f_frsize - 8192)))
        yield root
    finally:
        subprocess.run(["umount", str(root)], capture_output=True, timeout=30)


def _nothing_half_written(root: Path) -> None:
    assert not list(root.rglob("*.tmp")) and not list(root.glob(".*partial"))


def _chat(path: Path) -> Path:
    row = {"messages": [{"role": "user", "content": "say a"}]}
    row["messages"].append({"role": "assistant", "content": "abab abab"})
    path.write_text((json.dumps(row) + "\n") * 8)
    return path


def test_predict_into_a_full_disk(full_disk: Path, model_dir: Path, tmp_path: Path):
    args = ["predict", "--model", str(model_dir), "--data", str(_chat(tmp_path / "d.jsonl"))]
    args += ["--out", str(full_disk / "p"), "--max-examples", "8", "--max-new-tokens", "8"]
    one_error_line(CliRunner().invoke(main, args), "no space left on device writing")
    _nothing_half_written(full_disk)


def test_audit_into_a_full_disk(full_disk: Path, model_dir: Path):
    args = ["audit", "--model", str(model_dir), "--out", str(full_disk / "a"), "--max-pairs", "8"]
    result = CliRunner().invoke(main, args + ["--n-perm", "10", "--n-boot", "10", "--no-heads"])
    one_error_line(result, "no space left on device writing")
    _nothing_half_written(full_disk)


def test_finetune_into_a_full_disk(full_disk: Path, model_dir: Path, tmp_path: Path):
    args = ["finetune", "--model", str(model_dir), "--data", str(_chat(tmp_path / "d.jsonl"))]
    args += ["--out", str(full_disk / "ft"), "--max-steps", "4", "--save-steps", "2"]
    result = CliRunner().invoke(main, args + ["--batch-size", "2", "--no-progress"])
    one_error_line(result, "no space left on device writing", str(full_disk))
    _nothing_half_written(full_disk)
