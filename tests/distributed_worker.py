"""One process of the distributed fine-tuning test (``tests/test_distributed.py``).

Run under ``torchrun --nproc_per_node 2``: ``python distributed_worker.py SPEC.json``. Every
rank records the files it creates, writes, renames or removes under ``spec["watch"]`` (an
audit hook: it sees ``open`` / ``os.rename`` / ``os.remove`` / ``os.mkdir`` / ``shutil.*`` from
Python code, including filelock's ``os.open`` of a lock file; not the C++/Rust writers of
``torch.save`` and safetensors, so ``PeftModel.save_pretrained`` calls are recorded too) while
it runs
:func:`geomsafe.train.finetune`; then it dumps, into ``spec["side"]``, its LoRA weights
(``lora-<rank>.pt``, after the orthogonal guard's projection) and the recorded paths
(``writes-<rank>.json``). Nothing here is a debug hook of the library: the test only reads
what ``finetune`` returns.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_EVENTS = {
    "os.rename",
    "os.remove",
    "os.mkdir",
    "os.rmdir",
    "shutil.rmtree",
    "shutil.copyfile",
    "shutil.move",
}


def watch(root: str, seen: list[str]) -> None:
    """Append to ``seen`` every write under ``root`` (module docstring) until ``watch.stop()``."""
    root = os.path.realpath(root)
    recording = [True]

    def hook(event: str, args: tuple) -> None:
        if not recording[0]:
            return
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            paths = [path] if writes else []
        elif event in _EVENTS:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for p in paths:
            p = os.fsdecode(p) if not isinstance(p, int) else ""
            if p and os.path.realpath(p).startswith(root):
                seen.append(f"{event} {os.path.relpath(os.path.realpath(p), root)}")

    sys.addaudithook(hook)
    watch.stop = lambda: recording.__setitem__(0, False)  # type: ignore[attr-defined]


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    side = Path(spec["side"])
    seen: list[str] = []
    watch(spec["watch"], seen)

    import torch
    from peft import PeftModel

    from geomsafe.train import TrainConfig, finetune

    # The adapter is written by safetensors' Rust code, which the audit hook cannot see.
    save = PeftModel.save_pretrained

    def recorded_save(self, save_directory, *args, **kwargs):
        seen.append(f"save_pretrained {os.path.relpath(save_directory, spec['watch'])}")
        return save(self, save_directory, *args, **kwargs)

    PeftModel.save_pretrained = recorded_save  # type: ignore[method-assign]

    result = finetune(
        spec["model"],
        spec["data"],
        out=spec["out"],
        guard=spec["guard"],
        guard_concepts=spec["concepts"],
        atlas=spec["atlas"],
        config=TrainConfig(**spec["config"]),
        progress=False,
    )
    watch.stop()  # type: ignore[attr-defined]
    assert result.lm is not None
    lora = {
        k: v.detach().cpu().clone() for k, v in result.lm.model.state_dict().items() if "lora_" in k
    }
    side.mkdir(parents=True, exist_ok=True)
    torch.save(lora, side / f"lora-{rank}.pt")
    (side / f"writes-{rank}.json").write_text(json.dumps(seen))
    (side / f"log-{rank}.json").write_text(json.dumps(result.geometry_log))


if __name__ == "__main__":
    main(sys.argv[1])
