from __future__ import annotations

import pytest
import torch

from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import attention_out_proj, token_span
from geomsafe.concepts import ConceptSet, Pair
from geomsafe.directions import ConceptActivations, extract, unit
from geomsafe.formatting import Example, encode
from geomsafe.geometry import (
    cosine_matrix,
    effective_rank,
    head_attribution,
    overlap,
    overlap_per_layer,
    overlap_score,
    superposition_density,
)
from geomsafe.geometry.heads import head_readout, shared_heads
from geomsafe.layers import get_layers
from geomsafe.testing import tiny_model

D = 24


def _acts(name, kind, direction, n=40, seed=0, scale=1.0, anisotropy=None):
    """Paired activations whose differences are ``direction`` + noise (anisotropic if asked)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, D, generator=g)
    if anisotropy is not None:
        base = base * anisotropy
    noise = torch.randn(n, 1, D, generator=g) * (anisotropy if anisotropy is not None else 1)
    neg = base
    pos = base + noise * 0.5 + scale * direction
    return ConceptActivations(name, kind, [0], pos, neg)


def _atlas(acts: dict[str, ConceptActivations]) -> FeatureAtlas:
    dirs = {n: unit(a.pos.mean(0) - a.neg.mean(0)) for n, a in acts.items()}
    return FeatureAtlas([0], dirs, {n: a.kind for n, a in acts.items()})


def test_overlap_score_is_max_positive_cosine():
    e = torch.eye(3)
    atlas = FeatureAtlas(
        [0],
        {"t": e[0][None], "h1": unit(e[0] + e[1])[None], "h2": -e[0][None]},
        {"t": "target", "h1": "harmful", "h2": "harmful"},
    )
    score, nearest, cos = overlap_score(atlas, "t", [0])
    assert nearest == "h1" and score == pytest.approx(2**-0.5, abs=1e-6)
    assert cos["h2"] == pytest.approx(-1.0)
    only_neg = FeatureAtlas(
        [0], {"t": e[0][None], "h": -e[0][None]}, {"t": "target", "h": "harmful"}
    )
    assert overlap_score(only_neg, "t", [0])[0] == 0.0


def test_null_separates_related_from_random_labels():
    g = torch.Generator().manual_seed(1)
    u = unit(torch.randn(D, generator=g))
    v = unit(torch.randn(D, generator=g))
    aniso = torch.ones(D)
    aniso[:2] = 8.0  # two outlier dimensions, as in real LLM activations
    acts = {
        "harm": _acts("harm", "harmful", u, seed=2, scale=3, anisotropy=aniso),
        "other": _acts("other", "harmful", v, seed=3, scale=3, anisotropy=aniso),
        "related": _acts("related", "target", unit(u + 0.5 * v), seed=4, scale=3, anisotropy=aniso),
        "random": _acts("random", "control", torch.zeros(D), seed=5, anisotropy=aniso),
    }
    atlas = _atlas(acts)
    rel = overlap(atlas, acts, "related", [0], ["harm", "other"], n_perm=300, n_boot=100)
    assert rel.harmful == "harm" and rel.p_value < 0.05
    assert rel.ci.low <= rel.score <= rel.ci.high and rel.score > rel.null_q95
    assert rel.ci.value == rel.score and rel.ci.n == 40 and rel.ci.n_boot == 100
    rnd = overlap(atlas, acts, "random", [0], ["harm", "other"], n_perm=300, n_boot=100)
    assert rnd.p_value > 0.05
    again = overlap(atlas, acts, "random", [0], ["harm", "other"], n_perm=300, n_boot=100)
    assert again == rnd  # same seed, same numbers


def test_cosine_matrix_symmetric_unit_diagonal():
    g = torch.Generator().manual_seed(0)
    atlas = FeatureAtlas(
        [3],
        {n: unit(torch.randn(1, D, generator=g)) for n in "abc"},
        dict.fromkeys("abc", "harmful"),
    )
    m = cosine_matrix(atlas, 3)
    torch.testing.assert_close(m, m.T)
    torch.testing.assert_close(torch.diagonal(m), torch.ones(3))


def test_density_extremes_and_baseline():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(400, D, generator=g)
    same = superposition_density(torch.ones(4, D), acts, layer=0)
    assert same.density == pytest.approx(1.0)
    ortho = superposition_density(torch.eye(D)[:4], acts, layer=0)
    assert ortho.density == pytest.approx(0.0, abs=1e-7)
    assert ortho.baseline == pytest.approx(1 / D, rel=0.35)  # isotropic activations
    aniso = acts.clone()
    aniso[:, 0] *= 20
    crowded = superposition_density(torch.eye(D)[:4], aniso, layer=0)
    assert crowded.baseline > 5 * ortho.baseline  # anisotropy crowds random directions


def test_effective_rank():
    g = torch.Generator().manual_seed(0)
    assert effective_rank(torch.randn(2000, 8, generator=g)) == pytest.approx(8, rel=0.05)
    rank1 = torch.randn(100, 1, generator=g) * torch.randn(1, 8, generator=g)
    assert effective_rank(rank1) == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_head_attribution_sums_to_attention_write(family):
    lm = tiny_model(family)
    concept = ConceptSet(
        "c", "target", [Pair(f"q{i}", "yes " * (i + 1), "no " * (i + 1)) for i in range(4)]
    )
    u = unit(torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0)))
    acts = extract(lm, [concept], heads=True, progress=False).activations["c"]
    attr = head_attribution(lm, acts, 1, u)
    assert len(attr.attribution) == lm.n_heads
    # The sum over heads equals u . (mean attention write on positives - on negatives),
    # measured independently with a hook on the output projection's output.
    proj = attention_out_proj(get_layers(lm.model, lm.layer_template)[1])
    bias = getattr(proj, "bias", None)
    writes = {}
    for label, resp in (("pos", "positive"), ("neg", "negative")):
        pooled = []
        for pair in concept.pairs:
            enc = encode(lm.tokenizer, Example(pair.prompt, getattr(pair, resp)))
            start, end = token_span(enc, "response", 1)
            out = {}
            handle = proj.register_forward_hook(lambda m, i, o, out=out: out.setdefault("o", o))
            try:
                with torch.no_grad():
                    lm.model(torch.tensor([enc.input_ids]))
            finally:
                handle.remove()
            w = out["o"][0, start:end]
            pooled.append((w - (bias if bias is not None else 0)).mean(0))
        writes[label] = torch.stack(pooled).mean(0)
    expected = float(u @ (writes["pos"] - writes["neg"]))
    assert sum(attr.attribution) == pytest.approx(expected, rel=1e-3, abs=1e-5)
    assert head_readout(lm, 1, u).shape == (lm.n_heads, lm.d_model // lm.n_heads)
    assert sum(abs(f) for f in attr.fraction) == pytest.approx(1.0, abs=1e-5)


def test_shared_heads_needs_both_positive():
    from geomsafe.geometry.heads import HeadAttribution

    a = HeadAttribution(0, "t", [1, 1, -1], [0.5, 0.3, -0.2])
    b = HeadAttribution(0, "h", [1, -1, 1], [0.4, -0.4, 0.2])
    shared = shared_heads(a, b)
    assert [s["head"] for s in shared] == [0] and shared[0]["shared"] == pytest.approx(0.4)


def test_effective_rank_equals_svd_spectrum():
    g = torch.Generator().manual_seed(3)
    for n, d in ((300, 20), (12, 40)):  # more and fewer rows than dimensions
        acts = torch.randn(n, d, generator=g) * torch.rand(d, generator=g) * 5 + 3
        s = torch.linalg.svdvals((acts - acts.mean(0)).double()) ** 2
        p = s / s.sum()
        p = p[p > 0]
        expected = float(torch.exp(-(p * p.log()).sum()))
        assert effective_rank(acts) == pytest.approx(expected, rel=1e-9)


def test_overlap_per_layer_equals_one_layer_overlap():
    """The vectorised per-layer scores and null equal :func:`overlap` at each single layer."""
    g = torch.Generator().manual_seed(4)
    layers = [0, 2, 5]
    acts = {}
    for name, kind in (("t", "target"), ("h1", "harmful"), ("h2", "harmful")):
        base = torch.randn(30, len(layers), D, generator=g)
        shift = torch.randn(len(layers), D, generator=g)
        pos = base + torch.randn(30, len(layers), D, generator=g) * 0.5 + shift
        acts[name] = ConceptActivations(name, kind, layers, pos, base)
    dirs = {n: unit(a.pos.mean(0) - a.neg.mean(0)) for n, a in acts.items()}
    atlas = FeatureAtlas(layers, dirs, {n: a.kind for n, a in acts.items()})
    rows = overlap_per_layer(atlas, "t", ["h1", "h2"], acts, n_perm=64, seed=7)
    assert [r["layer"] for r in rows] == layers
    for row, layer in zip(rows, layers, strict=True):
        one = overlap(atlas, acts, "t", [layer], ["h1", "h2"], n_perm=64, n_boot=8, seed=7)
        assert row["harmful"] == one.harmful and row["cosines"] == one.cosines
        assert row["score"] == one.score and row["p_value"] == one.p_value
        assert row["null_mean"] == pytest.approx(one.null_mean, rel=1e-6)
        assert row["null_q95"] == pytest.approx(one.null_q95, rel=1e-6)
    plain = overlap_per_layer(atlas, "t", ["h1", "h2"])
    assert [r["score"] for r in plain] == [r["score"] for r in rows] and "p_value" not in plain[0]


def test_density_baseline_equals_draw_by_draw():
    """The batched random-direction baseline equals drawing and scoring one set at a time."""
    from geomsafe.geometry.density import mean_sq_cos

    g = torch.Generator().manual_seed(5)
    acts = torch.randn(200, D, generator=g) * torch.rand(D, generator=g) * 4 + 1
    dirs = torch.randn(5, D, generator=g)
    got = superposition_density(dirs, acts, layer=3, n_draws=20, seed=9)
    gen = torch.Generator().manual_seed(9)
    centred = acts - acts.mean(0)
    draws = [mean_sq_cos((centred.T @ torch.randn(200, 5, generator=gen)).T) for _ in range(20)]
    base = torch.tensor(draws)
    assert got.baseline == pytest.approx(float(base.mean()), rel=1e-6)
    assert got.baseline_sd == pytest.approx(float(base.std()), rel=1e-5)
    assert got.density == pytest.approx(mean_sq_cos(dirs), rel=1e-7)
