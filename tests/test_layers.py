from __future__ import annotations

import pytest
from torch import nn

from geomsafe.errors import GeomsafeError
from geomsafe.layers import get_layers, guess_layer_template, resolve_layers


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
