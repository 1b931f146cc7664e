from pathlib import Path

from geomsafe.train.outdir import COMPLETE, RunDir, abandon, latest_checkpoint, work_dir


def _checkpoint(folder: Path, step: int, complete: bool) -> Path:
    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
    for name in COMPLETE if complete else COMPLETE[:1]:  # incomplete: the Trainer's part only
        (ckpt / name).write_text("{}")
    return ckpt


def test_abandon_keeps_the_last_complete_checkpoint_and_drops_half_written_ones(tmp_path):
    run = RunDir(tmp_path / "out", work_dir(tmp_path / "out"))
    kept = _checkpoint(run.checkpoints, 2, complete=True)
    half = _checkpoint(run.checkpoints, 4, complete=False)  # the disk filled while saving it
    abandon(run)
    assert kept.is_dir() and not half.exists()
    assert latest_checkpoint(run.checkpoints) == kept


def test_abandon_without_a_complete_checkpoint_leaves_nothing(tmp_path):
    run = RunDir(tmp_path / "out", work_dir(tmp_path / "out"))
    _checkpoint(run.checkpoints, 2, complete=False)
    abandon(run)
    assert not run.work.exists() and list(tmp_path.iterdir()) == []
