from __future__ import annotations

import pytest
import torch
from torch import nn

from geomsafe.errors import GeomsafeError
from geomsafe.layers import (
    RESIDUAL_WRITERS,
    attention_out_proj,
    decoder_blocks,
    get_layers,
    guess_layer_template,
    hidden_of,
    mlp_out_proj,
    resolve_layers,
    submodule,
)


def test_guess_known_families(any_tiny):
    template = guess_layer_template(any_tiny.model)
    assert template in ("model.layers.{num}", "transformer.h.{num}")
    assert len(get_layers(any_tiny.model, template)) == any_tiny.n_layers == 3


def test_guess_generic_longest_uniform_list():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
            self.stack = nn.Module()
            self.stack.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(4)])

    assert guess_layer_template(Net()) == "stack.blocks.{num}"


def test_override_and_errors(tiny_llama):
    assert len(get_layers(tiny_llama.model, "model.layers.{num}")) == 3
    with pytest.raises(GeomsafeError, match="placeholder"):
        get_layers(tiny_llama.model, "model.layers")
    with pytest.raises(GeomsafeError, match="does not name"):
        get_layers(tiny_llama.model, "model.nothing.{num}")
    with pytest.raises(GeomsafeError, match="could not find"):
        guess_layer_template(nn.Linear(2, 2))


def test_resolve_layers():
    assert resolve_layers(4, None) == [0, 1, 2, 3]
    assert resolve_layers(4, [-1, 0, 0]) == [0, 3]
    with pytest.raises(GeomsafeError):
        resolve_layers(4, [4])


def test_decoder_blocks_of_plain_and_peft_models(tiny_llama):
    from peft import LoraConfig, get_peft_model

    blocks = get_layers(tiny_llama.model)
    assert decoder_blocks(tiny_llama.model) == blocks
    peft = get_peft_model(tiny_llama.model, LoraConfig(r=2, target_modules=["q_proj"]))
    for template in (None, "model.layers.{num}", "base_model.model.model.layers.{num}"):
        assert decoder_blocks(peft, template) == blocks
    with pytest.raises(GeomsafeError, match="does not name"):
        decoder_blocks(peft, "model.nothing.{num}")


def test_block_outputs_and_residual_writers(any_tiny):
    block = get_layers(any_tiny.model)[0]
    attention, mlp = attention_out_proj(block), mlp_out_proj(block)
    assert isinstance(attention, nn.Module) and isinstance(mlp, nn.Module)
    paths = {m: name for name, m in block.named_modules()}
    assert paths[attention] in RESIDUAL_WRITERS and paths[mlp] in RESIDUAL_WRITERS
    assert submodule(block, paths[mlp]) is mlp
    assert submodule(block, "mlp.nothing") is None and submodule(block, "mlp.act_fn.x") is None
    with pytest.raises(GeomsafeError, match="no attention output projection"):
        attention_out_proj(nn.Linear(2, 2))
    assert mlp_out_proj(nn.Linear(2, 2)) is None
    out = torch.ones(2)
    assert hidden_of(out) is out and hidden_of((out, None)) is out
