from __future__ import annotations

import peft
import pytest
import torch

from geomsafe.adapters import (
    PEFT_PREFIX,
    adapter_disabled,
    is_peft,
    layer_template_for,
    peft_layer_template,
    view,
)
from geomsafe.errors import GeomsafeError
from geomsafe.layers import get_layers
from geomsafe.testing import tiny_model


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_view_names_the_same_layers_inside_and_outside_peft(family):
    lm = tiny_model(family)
    plain_layers = get_layers(lm.model, lm.layer_template)
    model = peft.get_peft_model(lm.model, peft.LoraConfig(r=2, target_modules="all-linear"))
    assert is_peft(model) and not is_peft(lm.model.base_model)  # HF's base_model is no peft
    wrapped = view(lm, model)
    assert wrapped.layer_template == peft_layer_template(lm) == PEFT_PREFIX + lm.layer_template
    assert get_layers(wrapped.model, wrapped.layer_template) == plain_layers
    assert view(wrapped).layer_template == wrapped.layer_template  # idempotent
    assert peft_layer_template(wrapped) == wrapped.layer_template
    inner = view(wrapped, model.base_model.model)  # back to the plain model
    assert inner.layer_template == lm.layer_template
    assert get_layers(inner.model, inner.layer_template) == plain_layers
    assert layer_template_for(lm.model, "x.{num}") == "x.{num}"


def test_view_rejects_a_template_that_names_nothing():
    lm = tiny_model("llama")
    with pytest.raises(GeomsafeError, match="does not name"):
        view(lm, torch.nn.Linear(2, 2))


def test_adapter_disabled_runs_the_base_model():
    lm = tiny_model("llama")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        base = lm.model(ids).logits
    model = peft.get_peft_model(lm.model, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
        tuned = model(ids).logits
        with adapter_disabled(model):
            off = model(ids).logits
        with adapter_disabled(lm.model):  # not a peft model: a no-op (LoRA stays injected)
            plain = lm.model(ids).logits
    assert not torch.allclose(tuned, base) and torch.allclose(off, base)
    assert torch.allclose(plain, tuned)


def test_adapter_sha256_covers_the_adapter_files_only(tmp_path):
    from geomsafe.adapters import adapter_sha256

    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"w")
    first = adapter_sha256(tmp_path)
    (tmp_path / "README.md").write_text("not part of the adapter")
    assert adapter_sha256(tmp_path) == first
    (tmp_path / "adapter_model.safetensors").write_bytes(b"v")
    assert adapter_sha256(tmp_path) != first
