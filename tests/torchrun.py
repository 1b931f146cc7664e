"""Launch a test worker under ``torchrun --nproc_per_node 2`` (gloo, CPU) with a JSON spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"


def launch_two(worker: Path, spec: dict, root: Path) -> None:
    """Write ``spec`` to ``root/spec.json`` and run ``worker`` on it in 2 processes; fails the
    test with the workers' stderr when they fail."""
    (root / "spec.json").write_text(json.dumps(spec))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(worker.parent)]),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(worker), str(root / "spec.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
