"""One test per defect of issue 17 items 1, 2, 7 and 8 (reliability report cases C4, F20, the
SIGINT row of section 2, U03/U03b, X21b, X22), each on a tiny model, most through the real
command line in a subprocess (as a user meets them)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import geomsafe
from geomsafe.errors import GeomsafeError
from geomsafe.folder_lock import FolderBusy, read_holder
from geomsafe.hashing import file_sha256
from geomsafe.models import CACHE_META, TRUST_ENV, load
from geomsafe.testing import remote_code_folder, save_tiny, tiny_gguf
from geomsafe.train import TrainConfig, finetune
from geomsafe.train.outdir import COMPLETE, latest_checkpoint, work_dir
from reliability_helpers import DEFAULT_SIGINT

SRC = Path(geomsafe.__file__).resolve().parents[1]
REPO = SRC.parent
CLI = [sys.executable, "-c", DEFAULT_SIGINT + "from geomsafe.cli import main; main()"]
PAIRS = [("say a", "abab abab abab"), ("say b", "bcbc bcbc bcbc"), ("say c", "cdcd cdcd")] * 4


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **extra}


def _chat_jsonl(path: Path) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
        for p, r in PAIRS
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _stderr_lines(text: str) -> list[str]:
    """stderr without progress bars and blank lines."""
    return [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip() and "it/s]" not in ln]


def _wait_for(check, timeout: float, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := check()) is not None:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        time.sleep(0.2)
    raise AssertionError("timed out")


# --- item 1: a lock on --out, no silent loss of resumable work, --resume in the Ctrl-C message --


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A real `geomsafe finetune` subprocess: while it trains (a checkpoint written), a second
    finetune into the same --out runs in this process; then the first gets SIGINT."""
    root = tmp_path_factory.mktemp("ft")
    model, data, out = save_tiny(root / "model"), _chat_jsonl(root / "data.jsonl"), root / "out"
    args = ["finetune", "--model", str(model), "--data", str(data), "--out", str(out)]
    args += ["--max-steps", "100000", "--save-steps", "3", "--batch-size", "2", "--no-progress"]
    proc = subprocess.Popen(CLI + args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = _wait_for(lambda: latest_checkpoint(work_dir(out) / "checkpoints"), 300, proc)
        holder = read_holder(out)
        try:
            finetune(
                str(model), str(data), out=out, config=TrainConfig(max_steps=2), progress=False
            )
            second: GeomsafeError | None = None
        except GeomsafeError as exc:
            second = exc
        still_there = (first / "trainer_state.json").is_file()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {
        "model": model,
        "data": data,
        "out": out,
        "pid": proc.pid,
        "holder": holder,
        "second": second,
        "first_checkpoint_kept": still_there,
        "rc": proc.returncode,
        "stderr": err.decode(),
    }


def test_concurrent_finetune_second_run_gets_lock_error_naming_the_holder(interrupted):
    err, holder = interrupted["second"], interrupted["holder"]
    assert isinstance(err, FolderBusy), err
    msg = str(err)
    assert holder is not None and holder.pid == interrupted["pid"]
    assert f"pid {interrupted['pid']} on {socket.gethostname()}, started {holder.started}" in msg
    assert "finetune" in msg and "\n" not in msg
    assert interrupted["first_checkpoint_kept"]  # the second run deleted nothing


def test_sigint_message_says_checkpoint_kept_and_resume(interrupted):
    assert interrupted["rc"] == 130
    lines = _stderr_lines(interrupted["stderr"])
    assert "Traceback" not in interrupted["stderr"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("geomsafe: interrupted; checkpoint-")
    assert "--resume" in lines[0] and str(work_dir(interrupted["out"])) in lines[0]


def test_rerun_without_resume_refuses_to_discard_resumable_work(interrupted):
    out, model, data = interrupted["out"], str(interrupted["model"]), str(interrupted["data"])
    kept = latest_checkpoint(work_dir(out) / "checkpoints")
    assert kept is not None and not out.exists()
    with pytest.raises(GeomsafeError) as err:
        finetune(model, data, out=out, config=TrainConfig(max_steps=2), progress=False)
    assert "--resume" in str(err.value) and "--overwrite" in str(err.value)
    assert kept.name in str(err.value)
    assert latest_checkpoint(work_dir(out) / "checkpoints") == kept  # nothing discarded
    step = int(kept.name.split("-")[1])
    config = TrainConfig(max_steps=step + 1, save_steps=3, batch_size=2)
    resumed = finetune(model, data, out=out, config=config, resume=True, progress=False)
    assert resumed.metrics["resumed_from_step"] == step
    assert [r["step"] for r in resumed.geometry_log] == list(range(1, step + 2))
    assert read_holder(out) is None  # the lock was released


def test_overwrite_discards_interrupted_work(tmp_path: Path):
    model, data, out = save_tiny(tmp_path / "m"), _chat_jsonl(tmp_path / "d.jsonl"), tmp_path / "o"
    ckpt = work_dir(out) / "checkpoints" / "checkpoint-7"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    # stopped between the Trainer's save and geomsafe's callbacks: not resumable, not kept
    newer = ckpt.parent / "checkpoint-9"
    newer.mkdir()
    (newer / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(ckpt.parent) is None
    for name in COMPLETE[1:]:
        (ckpt / name).write_text("{}\n")
    assert latest_checkpoint(ckpt.parent) == ckpt
    with pytest.raises(GeomsafeError, match="checkpoint-7 of an interrupted run"):
        finetune(str(model), str(data), out=out, config=TrainConfig(max_steps=1), progress=False)
    config = TrainConfig(max_steps=1, batch_size=2)
    run = finetune(str(model), str(data), out=out, config=config, overwrite=True, progress=False)
    assert run.metrics["resumed_from_step"] == 0 and not work_dir(out).exists()


# --- item 2: custom model code is refused at once, never prompted for -------------------------


def test_remote_code_is_refused_at_once_even_when_stdin_says_yes(tmp_path: Path):
    folder = remote_code_folder(tmp_path / "evil", tmp_path / "markers")
    env = _env(HF_MODULES_CACHE=str(tmp_path / "modules"))
    env.pop(TRUST_ENV, None)
    proc = subprocess.run(
        CLI + ["info", "--model", str(folder)],
        input=b"y\ny\n",  # what ran the folder's code before (report case U03b)
        capture_output=True,
        env=env,
        timeout=300,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert _stderr_lines(err) == [_stderr_lines(err)[-1]]
    assert "needs its own Python code" in err and f"{TRUST_ENV}=1" in err
    assert "Do you wish to run the custom code" not in err + proc.stdout.decode()
    assert not (tmp_path / "markers").exists()  # nothing from the folder ran
    with pytest.raises(GeomsafeError, match="configuration_custom.py, modeling_custom.py"):
        load(str(folder))  # the Python API refuses too


def test_remote_code_loads_with_the_explicit_opt_in(tmp_path: Path):
    folder = remote_code_folder(tmp_path / "custom", tmp_path / "markers")
    env = _env(HF_MODULES_CACHE=str(tmp_path / "modules"), **{TRUST_ENV: "1"})
    proc = subprocess.run(
        CLI + ["info", "--model", str(folder), "--json"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["class"] == "CustomForCausalLM"
    assert {p.name for p in (tmp_path / "markers").iterdir()} == {
        "RAN_configuration_custom",
        "RAN_modeling_custom",
    }


# --- item 7: the model cache ----------------------------------------------------------------


def _logits(lm) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(torch.tensor([[1, 70, 80, 90, 100]])).logits


def test_corrupted_cache_of_the_same_size_is_detected_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMSAFE_CACHE", str(tmp_path / "cache"))
    gguf = tiny_gguf(tmp_path / "tiny.gguf")
    first = load(str(gguf))
    assert not first.from_cache
    assert first.provenance()["gguf_sha256"] == file_sha256(gguf)  # recorded in artefacts
    (cached,) = (tmp_path / "cache" / "gguf").iterdir()
    record = json.loads((cached / CACHE_META).read_text())
    assert record["gguf_sha256"] == file_sha256(gguf)
    assert record["files"]["model.safetensors"] == file_sha256(cached / "model.safetensors")
    assert load(str(gguf)).from_cache
    weights = cached / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as fh:  # zero the last 256 bytes: tensor data, same file size
        fh.seek(size - 256)
        fh.write(bytes(256))
    assert weights.stat().st_size == size
    with pytest.warns(UserWarning, match="rebuilding model cache .*model.safetensors"):
        rebuilt = load(str(gguf))
    assert not rebuilt.from_cache
    torch.testing.assert_close(_logits(rebuilt), _logits(first))
    again = load(str(gguf))
    assert again.from_cache
    torch.testing.assert_close(_logits(again), _logits(first))


def test_cache_of_a_changed_gguf_is_not_used(tmp_path, monkeypatch):
    """Same path, size and mtime (the cache folder's key), other bytes: the GGUF hash differs."""
    monkeypatch.setenv("GEOMSAFE_CACHE", str(tmp_path / "cache"))
    gguf = tiny_gguf(tmp_path / "tiny.gguf", seed=0)
    assert not load(str(gguf)).from_cache
    stat = gguf.stat()
    other = tiny_gguf(tmp_path / "other.gguf", seed=1)
    assert other.stat().st_size == stat.st_size
    shutil.copyfile(other, gguf)
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.warns(UserWarning, match="built from a different GGUF"):
        reloaded = load(str(gguf))
    assert not reloaded.from_cache
    torch.testing.assert_close(_logits(reloaded), _logits(load(str(other), use_cache=False)))


def _as_unprivileged() -> list[str]:
    """A prefix that makes root respect file permissions (as the report's [no-DAC] runs)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_readonly_cache_root_loads_without_cache_and_warns_once(tmp_path: Path):
    gguf = tiny_gguf(tmp_path / "tiny.gguf")
    ro = tmp_path / "ro_cache"
    ro.mkdir()
    ro.chmod(0o555)
    code = (
        "import json, sys, warnings\n"
        "from geomsafe.models import load\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    cached = [load(sys.argv[1]).from_cache for _ in range(2)]\n"
        "print(json.dumps({'cached': cached, 'warnings': [str(w.message) for w in seen]}))\n"
    )
    try:
        proc = subprocess.run(
            _as_unprivileged() + [sys.executable, "-c", code, str(gguf)],
            capture_output=True,
            env=_env(GEOMSAFE_CACHE=str(ro)),
            timeout=300,
        )
        cli = subprocess.run(
            _as_unprivileged() + CLI + ["info", "--model", str(gguf)],
            capture_output=True,
            env=_env(GEOMSAFE_CACHE=str(ro)),
            timeout=300,
        )
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout.decode().splitlines()[-1])
    assert result["cached"] == [False, False]
    ours = [w for w in result["warnings"] if w.startswith("geomsafe:")]
    assert len(ours) == 1 and "could not write model cache" in ours[0]
    assert not any(ro.iterdir())
    assert cli.returncode == 0, cli.stderr.decode()
    warned = [ln for ln in _stderr_lines(cli.stderr.decode()) if ln.startswith("geomsafe:")]
    assert len(warned) == 1 and "could not write model cache" in warned[0]


# --- item 8: predict_validation with NAME=PATH data sets; results outside the repository -----


def test_predict_validation_takes_name_equals_path_and_writes_outside_the_repo(tmp_path: Path):
    scripts = [
        REPO / "experiments" / name for name in ("behaviour_runs.py", "predict_validation.py")
    ]
    if not all(s.is_file() for s in scripts):
        pytest.skip(f"{scripts} not found")
    model = save_tiny(tmp_path / "model")
    a, b = _chat_jsonl(tmp_path / "a.jsonl"), _chat_jsonl(tmp_path / "b.jsonl")
    b.write_text(b.read_text().replace("abab", "zzzz"))
    results = tmp_path / "results"
    common = ["--model", str(model), "--steps", "1", "--train-examples", "4"]
    common += ["--datasets", f"a={a},b={b}"]
    extra = {"behaviour_runs.py": ["--rows", "advice", "--pairs", "4", "--quiet"]}
    extra["predict_validation.py"] = ["--max-examples", "2"]
    for script in scripts:
        proc = subprocess.run(
            [sys.executable, str(script), *common, *extra[script.name]],
            capture_output=True,
            env=_env(GEOMSAFE_RESULTS=str(results)),
            cwd=tmp_path,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    payload = json.loads((results / "predict_validation" / "validation.json").read_text())
    assert [r["dataset"] for r in payload["rows"]] == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "model", "results"]
