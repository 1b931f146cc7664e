from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from geomsafe import hooks
from geomsafe.errors import GeomsafeError
from geomsafe.layers import decoder_blocks

SRC = Path(__file__).resolve().parents[1] / "src" / "geomsafe"


def n_hooks(modules) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)


def ids_of(lm, length: int = 7) -> torch.Tensor:
    return torch.arange(3, 3 + 2 * length).reshape(2, length) % 100 + 3


def test_several_layers_see_the_residual_stream_in_order(any_tiny):
    lm = any_tiny
    ids = ids_of(lm)
    seen: list[tuple[int, torch.Tensor]] = []

    def keep(layer):
        return lambda hidden: seen.append((layer, hidden.detach().clone()))

    with torch.no_grad():
        ref = lm.model(ids, output_hidden_states=True).hidden_states
        with hooks.on_layers(lm.model, {1: keep(1), 0: keep(0)}):
            lm.model(ids)
    assert [layer for layer, _ in seen] == [0, 1]  # in forward order, whatever the dict's
    for layer, hidden in seen:  # hidden_states[l + 1] is block l's output (but the last's)
        assert hidden.shape == (2, ids.shape[1], lm.d_model)
        torch.testing.assert_close(hidden, ref[layer + 1])


def test_a_returned_tensor_replaces_the_residual_stream(tiny_llama):
    lm = tiny_llama
    ids = ids_of(lm)
    shift = torch.randn(lm.d_model)
    seen = []
    with torch.no_grad():
        plain = lm.model(ids).logits
        with hooks.on_layers(lm.model, {1: lambda h: h + shift}):
            with hooks.on_layers(lm.model, {1: lambda h: seen.append(h.clone())}):
                moved = lm.model(ids).logits
            with hooks.on_layers(lm.model, {1: lambda h: seen.append(h.clone())}, prepend=True):
                lm.model(ids)
        with hooks.on_layers(lm.model, {1: lambda h: None}):
            same = lm.model(ids).logits
    assert not torch.allclose(plain, moved)
    assert torch.equal(plain, same)  # None leaves the output as it was
    # appended after the shift: sees it; prepended before it: sees the block's own output
    torch.testing.assert_close(seen[0] - seen[1], shift.expand_as(seen[0]))


class _Block(nn.Module):
    def __init__(self, tuple_out: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.tuple_out = tuple_out

    def forward(self, x):
        h = self.lin(x)
        return (h, "extra") if self.tuple_out else h


class _Net(nn.Module):
    def __init__(self, tuple_out: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Block(tuple_out) for _ in range(2)])
        self.outs: list = []

    def forward(self, x):
        self.outs = []
        for block in self.layers:
            out = block(x)
            self.outs.append(out)
            x = out[0] if isinstance(out, tuple) else out
        return x


@pytest.mark.parametrize("tuple_out", [False, True])
def test_output_tuples_and_bare_tensors(tuple_out):
    torch.manual_seed(0)
    net, x = _Net(tuple_out), torch.randn(3, 4)
    plain = net(x)
    got = []
    with hooks.on_layers(net, {0: lambda h: got.append(h) or h * 0}):
        out = net(x)
    first = net.outs[0]
    assert torch.equal(got[0], net.layers[0].lin(x))  # the tensor, not the tuple
    if tuple_out:
        assert isinstance(first, tuple) and first[1] == "extra" and not first[0].any()
    else:
        assert torch.is_tensor(first) and not first.any()
    assert not torch.allclose(out, plain)
    assert n_hooks(net.layers) == 0


def test_plain_and_peft_models_give_the_same_values(tiny_llama):
    from peft import LoraConfig, get_peft_model

    lm = tiny_llama
    ids = ids_of(lm)
    plain: dict[int, torch.Tensor] = {}
    with torch.no_grad(), hooks.on_layers(lm.model, {2: lambda h: plain.setdefault(2, h)}):
        lm.model(ids)
    peft = get_peft_model(lm.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    blocks = decoder_blocks(peft)
    for template in (None, lm.layer_template, "base_model.model.model.layers.{num}"):
        wrapped: dict[int, torch.Tensor] = {}
        fns = {2: lambda h, out=wrapped: out.setdefault(2, h)}
        with torch.no_grad(), hooks.on_layers(peft, fns, layer_template=template):
            assert n_hooks(blocks) == 1
            peft(input_ids=ids)
        assert n_hooks(blocks) == 0
        torch.testing.assert_close(wrapped[2], plain[2])  # a fresh LoRA adds nothing


def test_every_hook_is_removed_on_an_error(tiny_llama):
    lm = tiny_llama
    blocks = decoder_blocks(lm.model)
    top = [lm.model, *blocks]
    def nothing(_hidden):
        return None

    both = {0: nothing, 2: nothing}
    with pytest.raises(RuntimeError, match="boom"), hooks.on_layers(lm.model, both):
        assert n_hooks(blocks) == 2
        raise RuntimeError("boom")
    assert n_hooks(top) == 0

    def fail(_hidden):
        raise ValueError("inside the forward")

    with pytest.raises(ValueError, match="inside"), hooks.on_layers(lm.model, {1: fail}):
        lm.model(ids_of(lm))
    assert n_hooks(top) == 0
    # a layer out of range fails before anything is installed
    bad = {0: nothing, 3: nothing}
    with pytest.raises(GeomsafeError, match="out of range"), hooks.on_layers(lm.model, bad):
        pass
        pass
    assert n_hooks(top) == 0


def test_on_modules_pre_hooks_kwargs_and_order(tiny_llama):
    lm = tiny_llama
    calls: list[str] = []

    def pre(_m, args, kwargs):
        calls.append(f"pre:{kwargs['input_ids'].shape[1]}")

    def post(_m, _args, _out):
        calls.append("post")

    def first(_m, _args, _out):
        calls.append("first")

    installed = [
        hooks.Hook(lm.model, pre, pre=True, with_kwargs=True),
        hooks.Hook(lm.model, post),
        hooks.Hook(lm.model, first, prepend=True),
    ]
    with torch.no_grad(), hooks.on_modules(installed):
        lm.model(input_ids=ids_of(lm, 5))
    assert calls == ["pre:5", "first", "post"]
    assert n_hooks([lm.model]) == 0
    # a hook that cannot be installed leaves none of those before it behind
    broken = hooks.Hook(None, post)  # type: ignore[arg-type]
    with pytest.raises(AttributeError), hooks.on_modules([installed[0], broken]):
        pass
    assert n_hooks([lm.model]) == 0


def test_only_hooks_py_registers_module_hooks():
    """The convention of :mod:`geomsafe.hooks`: every forward (pre-)hook goes through it."""
    pattern = re.compile(r"register_forward_(pre_)?hook")
    offenders = [
        f"{path.relative_to(SRC)}:{n}"
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "hooks.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert (SRC / "hooks.py").is_file() and pattern.search((SRC / "hooks.py").read_text())
    assert offenders == [], f"install hooks through geomsafe.hooks: {offenders}"

