"""The inputs of :func:`geomsafe.diff.diff`, checked before any forward pass: the examples
both models read (the default data and why: :mod:`geomsafe.diff.run`) and the adapter (its
folder, and whether it was made for this base model)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from geomsafe.adapters import ADAPTER_CONFIG
from geomsafe.artefacts import RUN_JSON, read_json
from geomsafe.datasets import Record, builtin_task, load_dataset
from geomsafe.diff.config import BUILTIN_DATA, DiffConfig
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example
from geomsafe.models import LoadedModel

TASKS = ("code", "factual_qa", "instruction_following", "summarisation")  # data="tasks"


def load_examples(cfg: DiffConfig) -> tuple[list[Example], str]:
    """``(examples, sha256 of their JSON lines)`` of ``cfg.data`` (module docstring)."""
    if cfg.data == BUILTIN_DATA:
        per_set = math.ceil(cfg.max_examples / len(TASKS))
        sets = [
            load_dataset(builtin_task(name)).sample(per_set, cfg.seed).records for name in TASKS
        ]
        records: list[Record] = []
        for i in range(per_set):
            records += [s[i] for s in sets if i < len(s)]
        records = records[: cfg.max_examples]
    else:
        records = load_dataset(cfg.data).sample(cfg.max_examples, cfg.seed).records
    sha = hashlib.sha256("".join(r.raw + "\n" for r in records).encode()).hexdigest()
    return [r.example for r in records], sha


def check_adapter_folder(adapter: str | Path) -> Path:
    """The adapter folder, checked to exist and hold a peft adapter config (before any load)."""
    folder = Path(adapter)
    if not folder.is_dir():
        raise GeomsafeError(f"adapter folder not found: {adapter}")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise GeomsafeError(f"{folder} is not a peft adapter folder (no {ADAPTER_CONFIG})")
    return folder


def _features(module: torch.nn.Module) -> tuple[int, int] | None:
    """``(in, out)`` features of a linear-like module (nn.Linear, GPT-2's Conv1D)."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if hasattr(module, "nf") and getattr(module, "weight", None) is not None:
        return int(module.weight.shape[0]), int(module.nf)
    return None


def check_adapter_fits(lm: LoadedModel, folder: Path) -> None:
    """Fail (one line) when the adapter in ``folder`` was made for another base model: its
    ``run.json`` (a geomsafe fine-tune) names another GGUF file or model class, or a LoRA
    weight names a module the model lacks or has another shape (read from the safetensors
    header, no weights loaded)."""
    if (folder / RUN_JSON).is_file():
        made = read_json(folder / RUN_JSON, "run").get("provenance", {})
        here = lm.provenance()
        for key in ("gguf_sha256", "model_class"):
            if made.get(key) and here.get(key) and made[key] != here[key]:
                raise GeomsafeError(
                    f"adapter {folder} was made for another base model ({key} "
                    f"{str(made[key])[:16]}, this model's is {str(here[key])[:16]})"
                )
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return  # a .bin adapter: peft's own load checks it
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    for key, shape in shapes.items():
        if not key.endswith((".lora_A.weight", ".lora_B.weight")) or len(shape) != 2:
            continue
        path = key.rsplit(".lora_", 1)[0].removeprefix("base_model.model.")
        try:
            module = lm.model.get_submodule(path)
        except AttributeError:
            raise GeomsafeError(
                f"adapter {folder} was made for another base model: this model has no module {path}"
            ) from None
        dims = _features(module)
        if dims is None:
            continue
        want = shape[1] if ".lora_A." in key else shape[0]
        have = dims[0] if ".lora_A." in key else dims[1]
        if want != have:
            side = "input" if ".lora_A." in key else "output"
            raise GeomsafeError(
                f"adapter {folder} was made for another base model: {path} has {side} width "
                f"{have} here, {want} in the adapter"
            )


__all__ = ["TASKS", "check_adapter_fits", "check_adapter_folder", "load_examples"]
