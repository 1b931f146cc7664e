from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import record
from geomsafe.errors import GeomsafeError
from geomsafe.guard import (
    GUARDS,
    Guard,
    GuardConfig,
    build_guards,
    combined,
    step_logs,
    total_penalty,
)
from geomsafe.guard.plan import decoder_blocks
from geomsafe.testing import tiny_model

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]
WIDTH, N_LAYERS = 32, 3
PEFT_TEMPLATE = "base_model.model.model.layers.{num}"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and spinning threads crawl on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def make_atlas(width: int = WIDTH, seed: int = 0) -> FeatureAtlas:
    g = torch.Generator().manual_seed(seed)
    names = {"tox": "harmful", "dec": "harmful", "help": "target", "code": "target"}
    dirs = {n: unit(torch.randn(N_LAYERS, width, generator=g)) for n in names}
    stats = {
        "tox": {"best_layer": 1, "diff_norm": [2.0, 3.0, 4.0]},
        "dec": {"best_layer": 1, "diff_norm": [1.0, 1.5, 2.0]},
    }
    return FeatureAtlas(list(range(N_LAYERS)), dirs, names, stats)


def peft_llama(seed: int = 0, family: str = "llama"):
    lm = tiny_model(family, n_layers=N_LAYERS, width=WIDTH, seed=seed)
    targets = LLAMA_TARGETS if family == "llama" else ["c_attn", "c_proj", "c_fc"]
    torch.manual_seed(seed)
    model = get_peft_model(lm.model, LoraConfig(r=4, target_modules=targets))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    model.train()
    return model


def hooks(model) -> list[int]:
    return [len(b._forward_hooks) for b in decoder_blocks(model)]


def make_batch(seed: int = 0, batch: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # right padding on the second row
    labels = ids.clone()
    labels[:, :5] = -100  # prompt tokens
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def residual(model, batch, layer: int) -> torch.Tensor:
    """Output of decoder layer ``layer`` (< last) via output_hidden_states, with grad."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_hidden_states=True,
    )
    return out.hidden_states[layer + 1]


def writer_delta(module) -> torch.Tensor:
    """``B @ A`` ([out, in]) of a LoRA module's default adapter."""
    with torch.no_grad():
        return module.lora_B["default"].weight @ module.lora_A["default"].weight


def writers(model, layer: int, family: str = "llama"):
    block = decoder_blocks(model)[layer]
    if family == "llama":
        return [block.self_attn.o_proj, block.mlp.down_proj]
    return [block.attn.c_proj, block.mlp.c_proj]


def push_along(model, u: torch.Tensor, layer: int, steps: int, guards=(), family="llama") -> None:
    """SGD on a loss that rewards the residual at ``layer`` moving along ``u`` (the harmful
    direction) and along a second, random direction (the task)."""
    task = unit(torch.randn(u.shape[0], generator=torch.Generator().manual_seed(9)))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    batch = make_batch()
    for _ in range(steps):
        template = PEFT_TEMPLATE if family == "llama" else "base_model.model.transformer.h.{num}"
        with record(model, [layer], template, detach=False) as store:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = -(store[layer] @ (u + task)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        for guard in guards:
            guard.after_step(model)


def along_fraction(delta: torch.Tensor, u: torch.Tensor) -> float:
    return float((u @ delta).norm() / delta.norm())


@pytest.mark.filterwarnings("ignore:fan_in_fan_out")
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_orthogonal_removes_harmful_component(family):
    atlas = make_atlas()
    u = atlas.direction("tox", 1)
    cfg = GuardConfig(concepts=["tox"])

    plain = peft_llama(family=family)
    push_along(plain, u, 1, steps=3, family=family)
    for module in writers(plain, 1, family):
        assert along_fraction(writer_delta(module), u) > 0.1

    guarded = peft_llama(family=family)
    (guard,) = build_guards(["orthogonal"], atlas, cfg)
    push_along(guarded, u, 1, steps=3, guards=[guard], family=family)
    for module in writers(guarded, 1, family):
        delta = writer_delta(module)
        assert delta.norm() > 1e-3  # it did learn something
        assert along_fraction(delta, u) < 1e-5
    assert guard.log()["removed"] > 0.1
    # Blocks other than the guarded one are left alone (scope "layer").
    for module in writers(guarded, 0, family):
        assert along_fraction(writer_delta(module), u) > 1e-3


def test_orthogonal_upto_scope_projects_earlier_blocks():
    atlas = make_atlas()
    u = atlas.direction("tox", 1)
    model = peft_llama()
    (guard,) = build_guards(["orthogonal"], atlas, GuardConfig(["tox"], orthogonal_scope="upto"))
    push_along(model, u, 1, steps=3, guards=[guard])
    for layer in (0, 1):
        for module in writers(model, layer):
            assert along_fraction(writer_delta(module), u) < 1e-5


def test_orthogonal_needs_residual_writers():
    lm = tiny_model("llama", n_layers=N_LAYERS, width=WIDTH)
    model = get_peft_model(lm.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    (guard,) = build_guards(["orthogonal"], make_atlas(), GuardConfig(["tox"]))
    with pytest.raises(GeomsafeError, match="residual-stream writer"):
        guard.after_step(model)


def test_steer_adds_exactly_during_install_only():
    atlas = make_atlas()
    model = peft_llama()
    batch = make_batch()
    coeff = 0.7
    cfg = GuardConfig(concepts=["tox", "dec"], steer_coeff=coeff, steer_scale="unit")
    (guard,) = build_guards(["steer"], atlas, cfg, layer_template=PEFT_TEMPLATE)
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def layer_out():
        with record(model, [1], PEFT_TEMPLATE) as store:
            model(**kwargs)
        return store[1]

    n_hooks = hooks(model)
    before = layer_out()
    with guard.install(model):
        steered = layer_out()
    after = layer_out()
    expected = coeff * (atlas.direction("tox", 1) + atlas.direction("dec", 1))
    torch.testing.assert_close(steered - before, expected.expand_as(before), atol=1e-5, rtol=0)
    torch.testing.assert_close(after, before)
    assert hooks(model) == n_hooks
    # The logged projection is the model's own (before the addition); the penalty is None.
    with guard.install(model):
        model(**kwargs)
    assert guard.penalty(model, batch) is None
    mask = batch["labels"] != -100
    direct = float((before[mask] @ atlas.direction("tox", 1)).mean())
    assert guard.log()["proj/tox"] == pytest.approx(direct, abs=1e-5)
    assert guard.log()["penalty"] == 0.0


@pytest.mark.parametrize("scale", ["norm", "diff"])
def test_steer_scales(scale):
    atlas = make_atlas()
    model = peft_llama()
    batch = make_batch()
    cfg = GuardConfig(concepts=["tox"], steer_coeff=0.5, steer_scale=scale)
    (guard,) = build_guards(["steer"], atlas, cfg)
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with record(model, [1], PEFT_TEMPLATE) as store:
        model(**kwargs)
    before = store[1]
    with guard.install(model), record(model, [1], PEFT_TEMPLATE) as store:
        model(**kwargs)
    u = atlas.direction("tox", 1)
    if scale == "norm":
        size = float(before.reshape(-1, WIDTH).norm(dim=-1).median())
        assert guard.norms[1] == pytest.approx(size, rel=1e-5)
    else:
        size = 3.0  # diff_norm of tox at layer 1
    torch.testing.assert_close(
        store[1] - before, (0.5 * size * u).expand_as(before), atol=1e-4, rtol=0
    )


def projection_reference(model, batch, atlas, names, layer):
    """mean over assistant tokens of sum_h (proj_h(adapted) - proj_h(base))², directly."""
    adapted = residual(model, batch, layer)
    with torch.no_grad(), model.disable_adapter():
        base = residual(model, batch, layer)
    dirs = atlas.matrix(layer, names)
    mask = batch["labels"] != -100
    diff = (adapted - base)[mask] @ dirs.T
    return diff.pow(2).sum(-1).mean()


def test_projection_penalty_zero_at_init_then_positive_with_gradients():
    atlas = make_atlas()
    model = peft_llama()
    batch = make_batch()
    cfg = GuardConfig(concepts=["tox", "dec"], weight=2.0)
    (guard,) = build_guards(["projection"], atlas, cfg, layer_template=PEFT_TEMPLATE)
    n_hooks = hooks(model)
    with guard.install(model):
        model(**batch)
    p0 = guard.penalty(model, batch)
    assert p0 is not None and abs(p0.item()) < 1e-10  # B = 0: adapted == base
    guard.after_step(model)

    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    with guard.install(model):
        model(**batch)
    p1 = guard.penalty(model, batch)
    assert hooks(model) == n_hooks  # the base forward's hooks are gone too
    assert p1 is not None and p1.item() > 1e-4
    ref = projection_reference(model, batch, atlas, ["tox", "dec"], 1)
    assert p1.item() == pytest.approx(2.0 * float(ref.detach()), rel=1e-4)
    p1.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert guard.log()["penalty"] == pytest.approx(p1.item())

    # "increase" only counts moves towards the harmful side: never more than "both".
    (inc,) = build_guards(
        ["projection"], atlas, GuardConfig(["tox", "dec"], weight=2.0, projection_mode="increase")
    )
    with inc.install(model):
        model(**batch)
    p_inc = inc.penalty(model, batch).item()
    assert 0 < p_inc < p1.item()


def test_projection_needs_recorded_forward_and_peft():
    atlas = make_atlas()
    model = peft_llama()
    (guard,) = build_guards(["projection"], atlas, GuardConfig(["tox"]))
    with pytest.raises(GeomsafeError, match="install"):
        guard.penalty(model, make_batch())
    plain = tiny_model("llama", n_layers=N_LAYERS, width=WIDTH).model
    with guard.install(plain):
        plain(**make_batch())
    with pytest.raises(GeomsafeError, match="disable_adapter"):
        guard.penalty(plain, make_batch())


def test_covariance_matches_numpy():
    atlas = make_atlas()
    model = peft_llama()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    batch = make_batch(seed=3, batch=3, length=10)
    cfg = GuardConfig(concepts=["tox", "dec"], targets=["help", "code"], weight=0.5, layers=[0, 1])
    (guard,) = build_guards(["covariance"], atlas, cfg)
    with guard.install(model):
        model(**batch)
    pen = guard.penalty(model, batch)
    mask = (batch["labels"] != -100).numpy()
    expected = 0.0
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    for layer in (0, 1):
        r = out.hidden_states[layer + 1].numpy()[mask].astype(np.float64)  # [n, D]
        ph = r @ atlas.matrix(layer, ["tox", "dec"]).numpy().T.astype(np.float64)
        pt = r @ atlas.matrix(layer, ["help", "code"]).numpy().T.astype(np.float64)
        ph -= ph.mean(0)
        pt -= pt.mean(0)
        c = pt.T @ ph / r.shape[0]
        expected += float((c**2).sum())
    assert pen.item() == pytest.approx(0.5 * expected, rel=1e-4)
    pen.backward()
    assert any(
        p.grad is not None and float(p.grad.abs().sum()) > 0
        for n, p in model.named_parameters()
        if "lora_" in n
    )
    # Layers listed as a band: proj/<c> at the best layer plus one value per layer.
    log = guard.log()
    assert {"proj/tox", "proj/tox@0", "proj/tox@1", "penalty"} <= set(log)
    assert log["proj/tox"] == log["proj/tox@1"]


def test_registry_and_bad_input():
    assert set(GUARDS) == {"orthogonal", "steer", "projection", "covariance"}
    assert all(issubclass(cls, Guard) for cls in GUARDS.values())
    atlas = make_atlas()
    guards = build_guards("orthogonal, steer,orthogonal", atlas, GuardConfig())
    assert [g.name for g in guards] == ["orthogonal", "steer"]
    assert [p.layer for p in guards[0].plans] == [1]  # both concepts' best layer
    assert guards[0].plans[0].names == ["tox", "dec"]
    assert build_guards([], atlas) == []
    bad = [
        (["bogus"], GuardConfig(), "unknown guard"),
        (["steer"], GuardConfig(concepts=["nope"]), "no direction for nope"),
        (["steer"], GuardConfig(layers=[7]), "not in the atlas"),
        (["steer"], GuardConfig(steer_scale="huge"), "steer_scale"),
        (["projection"], GuardConfig(projection_mode="x"), "projection_mode"),
        (["projection"], GuardConfig(weight=-1), "weight"),
        (["covariance"], GuardConfig(targets=["nope"]), "target direction"),
    ]
    for names, cfg, message in bad:
        with pytest.raises(GeomsafeError, match=message):
            build_guards(names, atlas, cfg)
    no_targets = atlas.select(["tox", "dec"])
    with pytest.raises(GeomsafeError, match="target"):
        build_guards(["covariance"], no_targets, GuardConfig())
    small = make_atlas(width=16)
    (guard,) = build_guards(["steer"], small, GuardConfig(["tox"]))
    model = peft_llama()
    with pytest.raises(GeomsafeError, match="width"), guard.install(model):
        model(**make_batch())


def test_plain_torch_loop_docstring_example():
    atlas = make_atlas()
    model = peft_llama()
    batches = [make_batch(seed=s) for s in range(3)]
    config = GuardConfig(concepts=["tox"], targets=["help"], steer_scale="unit")
    guards = build_guards(list(GUARDS), atlas, config, layer_template=PEFT_TEMPLATE)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    n_hooks = hooks(model)
    logs = []
    for batch in batches:
        with combined(guards, model):
            loss = model(**batch).loss
        penalty = total_penalty(guards, model, batch)
        assert penalty is not None
        loss = loss + penalty
        loss.backward()
        opt.step()
        opt.zero_grad()
        for guard in guards:
            guard.after_step(model)
        logs.append(step_logs(guards))
    assert hooks(model) == n_hooks
    for name in GUARDS:
        assert f"{name}/penalty" in logs[-1]
        assert np.isfinite(logs[-1][f"{name}/proj/tox"])
    assert logs[-1]["orthogonal/penalty"] == 0.0 and logs[-1]["steer/penalty"] == 0.0
    assert logs[-1]["projection/penalty"] > 0
    u = atlas.direction("tox", 1)
    for module in writers(model, 1):
        assert along_fraction(writer_delta(module), u) < 1e-5
