"""Shared bits of the benchmarks: a fixed text set, a JSON result writer and where results go.

Results go to ``$GEOMSAFE_RESULTS`` (default ``~/.cache/geomsafe/results``), outside the
repository, so that running a measurement never changes the working tree.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import geomsafe
from geomsafe.artefacts import atomic_write_text

RESULTS = Path(os.environ.get("GEOMSAFE_RESULTS", Path.home() / ".cache" / "geomsafe" / "results"))
EM_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "emergent-misalignment" / "data"
GEOMSAFE_CLI = str(Path(sys.executable).with_name("geomsafe"))  # this interpreter's command

TOPICS = [
    "the history of the printing press",
    "how vaccines train the immune system",
    "why the sky is blue",
    "a recipe for lentil soup",
    "the rules of chess",
    "saving money on groceries",
    "how to learn a new language",
    "the water cycle",
    "what a hash table is",
    "the causes of the French revolution",
    "photosynthesis",
    "how to write a cover letter",
    "black holes",
    "the benefits of walking",
    "compound interest",
    "how bicycles stay upright",
    "the plot of Hamlet",
    "how to repot a plant",
]


def sample_examples(n: int) -> list[tuple[str, str]]:
    """Deterministic prompt/response pairs of varied length for throughput runs."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        reps = 1 + (i * 7) % 5
        response = " ".join([f"Here is a short note on {topic}, part {k}." for k in range(reps)])
        out.append((f"Explain {topic} in simple words.", response))
    return out


@torch.no_grad()
def bare_forward(net: torch.nn.Module, batches) -> None:
    """A bare backbone forward (no hooks, no LM head, no cache) over padded ``batches``."""
    for b in batches:
        net(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            position_ids=b.position_ids,
            use_cache=False,
        )


def machine() -> dict[str, object]:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "geomsafe": geomsafe.__version__,
    }


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """``payload`` as indented JSON at ``path``, atomically (the library's writer; a measurement
    is not a geomsafe artefact, so it carries no format stamp)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2))


def timed(argv: Sequence[str], log: Path) -> dict[str, float | int]:
    """Run ``argv`` with its output to ``log``; its exit code, wall seconds and peak RSS."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2),  # ru_maxrss is in KiB on Linux
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
    }


def last_line(log: Path) -> str:
    """The last line of a step's output that is not a progress bar (its error when it failed)."""
    lines = [x for x in re.split(r"[\r\n]", log.read_text(errors="replace")) if x.strip()]
    lines = [x for x in lines if "it/s]" not in x and "s/it]" not in x]
    return lines[-1].strip() if lines else ""
