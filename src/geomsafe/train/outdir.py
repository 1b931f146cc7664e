"""The run folder: train into ``<parent>/.<name>.partial`` and rename it to ``--out`` at the end.

A run that fails before its first checkpoint leaves nothing behind; one that fails later keeps
only the hidden ``.partial`` folder (so ``--resume`` can continue it), never a half-written
``--out``. ``--resume`` continues from the newest checkpoint of the ``.partial`` folder, or of a
finished run's ``--out/checkpoints`` (e.g. to train it for more steps). A run without
``--resume`` refuses to discard a ``.partial`` folder that holds a checkpoint unless
``--overwrite`` is given. A checkpoint counts only once it is complete (:data:`COMPLETE`:
the Trainer's state and geomsafe's geometry log and run record), so a stop in the middle of a
save resumes from the previous complete checkpoint (with ``save_total_limit=1`` the Trainer
may already have removed it; then the run starts again). The caller holds the folder's lock
(:mod:`geomsafe.folder_lock`) around all of this, so no other run can touch ``--out`` or its
``.partial`` meanwhile.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from geomsafe.artefacts import GEOMETRY_LOG
from geomsafe.errors import GeomsafeError

CHECKPOINTS = "checkpoints"
RUN_META = "geomsafe_run.json"  # written into every checkpoint; checked on resume
# a checkpoint is complete (resumable) once the Trainer's state and geomsafe's own files are in
# it: a stop between the Trainer's save and geomsafe's callbacks leaves it incomplete
COMPLETE = ("trainer_state.json", GEOMETRY_LOG, RUN_META)
_CKPT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class RunDir:
    out: Path
    work: Path

    @property
    def checkpoints(self) -> Path:
        return self.work / CHECKPOINTS


def work_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def _complete(ckpt: Path) -> bool:
    return all((ckpt / name).is_file() for name in COMPLETE)


def latest_checkpoint(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT.match(p.name))]
    found = [(n, p) for n, p in found if _complete(p)]
    return max(found)[1] if found else None


def check_out(out: Path, may_reuse: bool, hint: str) -> None:
    """Fail early when ``out`` is a file, or a non-empty folder that may not be reused."""
    if out.exists() and not out.is_dir():
        raise GeomsafeError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not may_reuse:
        raise GeomsafeError(f"{out} already exists and is not empty; pass {hint}")


def prepare_check(out: Path, resume: bool, overwrite: bool) -> None:
    """Fail early (before any work) when ``out`` cannot take this run, or when it would discard
    an interrupted run's checkpoint without ``--overwrite``."""
    check_out(out, resume or overwrite, "--resume to continue its run or --overwrite to replace it")
    kept = latest_checkpoint(work_dir(out) / CHECKPOINTS)
    if kept is not None and not (resume or overwrite):
        raise GeomsafeError(
            f"{work_dir(out)} holds {kept.name} of an interrupted run; pass --resume to continue "
            "it or --overwrite to discard it"
        )
    if (
        resume
        and latest_checkpoint(work_dir(out) / CHECKPOINTS) is None
        and (latest_checkpoint(out / CHECKPOINTS) is None)
    ):
        raise GeomsafeError(f"--resume: no checkpoint in {out / CHECKPOINTS} or {work_dir(out)}")


def prepare(
    out: str | Path, resume: bool, overwrite: bool, main: bool = True
) -> tuple[RunDir, Path | None]:
    """Check ``out``, set up the work folder and find the checkpoint to resume from.

    Only the main process (``main``) touches the file system."""
    out = Path(out).absolute()
    prepare_check(out, resume, overwrite)
    run = RunDir(out, work_dir(out))
    ckpt = None
    if resume:
        ckpt = latest_checkpoint(run.checkpoints)
        source = latest_checkpoint(out / CHECKPOINTS) if ckpt is None else None
        if ckpt is None and source is None:
            raise GeomsafeError(f"--resume: no checkpoint in {out / CHECKPOINTS} or {run.work}")
        if source is not None:
            ckpt = run.checkpoints / source.name
            if main:
                shutil.rmtree(run.work, ignore_errors=True)
                run.checkpoints.mkdir(parents=True)
                shutil.copytree(source, ckpt)
                if (out / "atlas").is_dir():
                    shutil.copytree(out / "atlas", run.work / "atlas")
    elif main:
        shutil.rmtree(run.work, ignore_errors=True)  # a stale folder from a failed run
    if main:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
    return run, ckpt


def resume_hint(out: str | Path) -> str | None:
    """What to tell a user whose run stopped: where its checkpoint is kept and how to go on
    (None when no checkpoint was kept)."""
    kept = latest_checkpoint(work_dir(Path(out).absolute()) / CHECKPOINTS)
    if kept is None:
        return None
    return f"{kept.name} is kept in {kept.parent.parent}; run the same command with --resume"


def abandon(run: RunDir) -> None:
    """After a failure: keep the work folder only when it holds a checkpoint to resume from,
    and drop checkpoints left incomplete (not all of :data:`COMPLETE`: a full disk, a crash
    while saving)."""
    if latest_checkpoint(run.checkpoints) is None:
        shutil.rmtree(run.work, ignore_errors=True)
        return
    for path in run.checkpoints.iterdir():
        if _CKPT.match(path.name) and not _complete(path):
            shutil.rmtree(path, ignore_errors=True)


def finalize(run: RunDir) -> None:
    """Rename the finished work folder to ``out`` (replacing an older run there)."""
    run.out.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if run.out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{run.out.name}.old-", dir=run.out.parent))
        os.replace(run.out, old / "run")
    os.replace(run.work, run.out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
