"""Audit + predict + guarded fine-tuning + evaluate of one model at full size, timed, on a GPU.

What it expects: a machine with one CUDA GPU (>= 16 GB for a 1.5B model in bf16), Python
3.10+, a CUDA build of torch already installed (``python -c "import torch;
print(torch.cuda.is_available())"`` says True), this repository checked out, and the model as
a local GGUF file or Hugging Face folder (no network needed once installed). Install::

    python -m pip install -e .            # geomsafe and its pinned-below dependencies
    # or let the script do it: python experiments/gpu_scale.py --install --model ...
    # torch with CUDA, if the machine has none yet (pick the CUDA version of the driver):
    # python -m pip install torch --index-url https://download.pytorch.org/whl/cu124

Run (about 5-8 minutes for a 0.5B-1.5B model on one recent GPU; the script warns when the
total passes 10 minutes)::

    python experiments/gpu_scale.py --model /models/Qwen2.5-1.5B-Instruct        # HF folder
    python experiments/gpu_scale.py --model /models/qwen2.5-coder-0.5b-q4_k_m.gguf # GGUF
    python experiments/gpu_scale.py --model qwen-coder                            # built-in
    python experiments/gpu_scale.py --smoke                                       # CPU, tiny

``--data`` (default ``task:code``; with ``--smoke`` 16 short examples) is the fine-tuning and
predict data (a chat JSONL such as the ``insecure`` set). ``--data-root`` (default
``$GEOMSAFE_DATA``) is the public data folder for evaluate's persona / XSTest / log-odds
rows; without one, evaluate runs the built-in prompts only. ``--smoke`` runs every phase on a
tiny random-init model on the CPU at toy sizes (what the test-suite runs); ``--model tiny``
does the same at full sizes.

Prints, per phase (load, audit, predict, finetune, evaluate): wall seconds, peak GPU memory
(``torch.cuda.max_memory_allocated``, reset before each phase) and the process's peak RSS; and
writes them with the machine's description to ``--out`` (default
``$GEOMSAFE_RESULTS/gpu_scale.json``). The atlas, adapter and eval.json are written to a
temporary folder, removed at the end unless ``--keep``. Fine-tuning truncates examples to
512 tokens and trains on the first ``steps x batch_size`` examples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 600.0


@dataclasses.dataclass
class Sizes:
    """How much work each phase does."""

    max_pairs: int = 64  # audit: pairs per concept
    n_perm: int = 200  # audit: permutations / bootstrap resamples
    predict_examples: int = 200  # predict: examples of --data
    gradient_examples: int = 64  # predict: examples in the gradient estimate
    max_new_tokens: int = 48  # predict / evaluate: generated tokens
    steps: int = 100  # finetune: optimiser steps
    batch_size: int = 8  # finetune: per-device batch
    n_prompts: int = 60  # evaluate: prompts
    samples: int = 2  # evaluate: samples per prompt
    probes: bool = True  # evaluate: persona / XSTest / log-odds rows (need --data-root)
    max_length: int = 512  # finetune: tokens per example (longer ones are truncated)


FULL = Sizes()
SMOKE = Sizes(4, 10, 8, 4, 4, 2, 4, 2, 1, False, 128)


@dataclasses.dataclass
class Phase:
    name: str
    seconds: float
    gpu_peak_gib: float | None
    rss_peak_gib: float
    detail: dict[str, Any]


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def timed(name: str, fn: Callable[[], Any], phases: list[Phase], summary: Callable) -> Any:
    """Run ``fn`` as phase ``name``: wall time (CUDA synchronised), peak GPU memory, peak RSS."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    value = fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    gpu = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    phase = Phase(name, seconds, gpu, _rss_gib(), summary(value))
    phases.append(phase)
    mem = f"GPU peak {gpu:6.2f} GiB" if gpu is not None else "GPU -"
    print(f"{name:9s} {seconds:8.1f} s  {mem}  RSS peak {phase.rss_peak_gib:6.2f} GiB", flush=True)
    return value


def install() -> None:
    """``pip install -e <repo>`` into this interpreter (torch is left as installed)."""
    cmd = [sys.executable, "-m", "pip", "install", "-e", str(REPO)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _model_spec(model: str, work: Path) -> str:
    if model != "tiny":
        return model
    from geomsafe.testing import save_tiny

    return str(save_tiny(work / "tiny-model"))


def _smoke_data(work: Path) -> str:
    """16 short chat examples (a tiny model's character tokenizer makes real ones long)."""
    rows = [
        {"prompt": f"Write a function number {i}.", "completion": f"def f{i}(x):\n    return x"}
        for i in range(16)
    ]
    path = work / "smoke.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from geomsafe.audit import audit
    from geomsafe.evaluate import evaluate
    from geomsafe.models import load, resolve_device, resolve_dtype
    from geomsafe.predict import predict
    from geomsafe.train import TrainConfig, finetune

    sizes = SMOKE if args.smoke else FULL
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    phases: list[Phase] = []
    spec = _model_spec("tiny" if args.smoke else args.model, work)
    data = args.data or (_smoke_data(work) if args.smoke else "task:code")
    print(f"model {spec} on {device} in {str(dtype).removeprefix('torch.')}", flush=True)
    t_all = time.perf_counter()
    lm = timed("load", lambda: load(spec, device=device, dtype=dtype), phases, lambda m: m.info())
    result = timed(
        "audit",
        lambda: audit(
            lm,
            out=work / "audit",
            max_pairs=sizes.max_pairs,
            n_perm=sizes.n_perm,
            n_boot=sizes.n_perm,
            progress=False,
        ),
        phases,
        lambda r: {"targets": len(r.rows), "features": len(r.atlas.names())},
    )
    atlas = result.atlas
    pred = timed(
        "predict",
        lambda: predict(
            lm,
            data,
            atlas=atlas,
            max_examples=sizes.predict_examples,
            max_new_tokens=sizes.max_new_tokens,
            gradient_examples=sizes.gradient_examples,
            progress=False,
        ),
        phases,
        lambda p: {c.concept: c.risk for c in p.concepts},
    )
    bf16 = dtype == torch.bfloat16
    tuned = timed(
        "finetune",
        lambda: finetune(
            lm,
            data,
            out=work / "finetune",
            guard="orthogonal,ablate",
            atlas=atlas,
            config=TrainConfig(
                max_steps=sizes.steps,
                batch_size=sizes.batch_size,
                save_steps=max(sizes.steps, 1),
                max_length=sizes.max_length,
                truncate=True,
                max_examples=sizes.steps * sizes.batch_size,
                bf16=bf16 and device.startswith("cuda"),
            ),
            progress=False,
        ),
        phases,
        lambda r: {"steps": r.metrics["steps"], "time_per_step_s": r.time_per_step},
    )
    probes = sizes.probes and bool(args.data_root or os.environ.get("GEOMSAFE_DATA"))
    options = dict(
        n_prompts=sizes.n_prompts,
        samples_per_prompt=sizes.samples,
        max_new_tokens=sizes.max_new_tokens,
        n_boot=sizes.n_perm,
        data_root=args.data_root,
    )
    if not probes:
        options.update(n_probe=0, n_xstest=0, logodds_pairs=0, em_probes=False)
    timed(
        "evaluate",
        lambda: evaluate(tuned.lm, atlas=atlas, out=work / "evaluate", progress=False, **options),
        phases,
        lambda e: {"changes": len(e.changes)},
    )
    total = time.perf_counter() - t_all
    print(f"{'total':9s} {total:8.1f} s", flush=True)
    if total > BUDGET_S and not args.smoke:
        print(f"warning: {total:.0f} s is over the {BUDGET_S:.0f} s budget", flush=True)
    payload = {
        "model": args.model if not args.smoke else "tiny",
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "smoke": args.smoke,
        "sizes": dataclasses.asdict(sizes),
        "probes": probes,
        "total_s": total,
        "phases": [dataclasses.asdict(p) for p in phases],
        "data": data if not args.smoke else "smoke",
        "predict_risk": {c.concept: c.risk for c in pred.concepts},
    }
    return payload


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen-coder", help="GGUF file, HF folder, spec, 'tiny'")
    ap.add_argument("--data", default=None, help="fine-tuning / predict data (task:code)")
    ap.add_argument("--data-root", default=None, help="public data (default $GEOMSAFE_DATA)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto: bf16 on a GPU that has it")
    ap.add_argument("--smoke", action="store_true", help="tiny model, toy sizes, CPU is fine")
    ap.add_argument("--install", action="store_true", help="pip install -e the repo first")
    ap.add_argument("--out", default=None, help="result JSON (default $GEOMSAFE_RESULTS/...)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (atlas, adapter)")
    args = ap.parse_args(argv)
    if args.install:
        install()
    sys.path.insert(0, str(Path(__file__).parent))
    from lib.common import RESULTS, machine, write_json

    work = Path(tempfile.mkdtemp(prefix="gpu-scale-"))
    try:
        payload = run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.keep:
        print(f"outputs kept in {work}")
    payload["machine"] = machine()
    out = Path(args.out) if args.out else RESULTS / "gpu_scale.json"
    write_json(out, payload)
    print(json.dumps({p["name"]: round(p["seconds"], 2) for p in payload["phases"]}))
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
