from __future__ import annotations

import pytest
import torch

from geomsafe.atlas import FeatureAtlas
from geomsafe.concepts import ConceptSet, Pair
from geomsafe.directions import auroc, extract, mean_difference, split_pairs
from geomsafe.errors import GeomsafeError


def _concept(name="c", kind="harmful", n=12):
    return ConceptSet(
        name,
        kind,
        [
            Pair(f"question {i}?", "yes yes " * (1 + i % 3), "no no " * (1 + i % 3))
            for i in range(n)
        ],
    )


def test_auroc_known_values():
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 0.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5


def test_mean_difference_is_unit_and_points_positive():
    pos = torch.zeros(5, 2, 4)
    pos[..., 0] = 3.0
    d = mean_difference(pos, torch.zeros(5, 2, 4))
    torch.testing.assert_close(d, torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]]))


def test_split_pairs_disjoint():
    train, test = split_pairs(20, 0.25, seed=0)
    assert len(test) == 5 and not set(train) & set(test) and sorted(train + test) == list(range(20))
    with pytest.raises(GeomsafeError):
        split_pairs(1, 0.5, 0)


def test_extract_matches_manual_capture_and_roundtrips(tiny_llama, tmp_path):
    from geomsafe.capture import capture
    from geomsafe.formatting import Example

    cs = _concept()
    ex = extract(tiny_llama, [cs, _concept("t", "target")], progress=False)
    atlas = ex.atlas
    pos = capture(tiny_llama, [Example(p.prompt, p.positive) for p in cs.pairs], progress=False)
    neg = capture(tiny_llama, [Example(p.prompt, p.negative) for p in cs.pairs], progress=False)
    torch.testing.assert_close(atlas.directions["c"], mean_difference(pos.pooled, neg.pooled))
    assert atlas.layers == [0, 1, 2] and atlas.kinds == {"c": "harmful", "t": "target"}
    stats = atlas.stats["c"]
    assert len(stats["heldout_auroc"]) == 3 and stats["best_layer"] in atlas.layers
    assert stats["best_auroc"] >= max(stats["heldout_auroc"]) - 5e-4
    assert len(stats["heldout_effect_size"]) == 3
    prov = atlas.provenance
    assert prov["hook_site"] == "decoder_layer_output" and prov["token_rule"] == "response"
    assert prov["data_hash"]["c"] == cs.data_hash() and "geomsafe_version" in prov
    atlas.save(tmp_path)
    back = FeatureAtlas.load(tmp_path)
    assert back.layers == atlas.layers and back.stats["c"]["best_layer"] == stats["best_layer"]
    torch.testing.assert_close(back.directions["c"], atlas.directions["c"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_shuffled_control_reuses_its_source_activations(tiny_llama, monkeypatch):
    import geomsafe.directions as directions

    cs = _concept(n=10)
    control = cs.shuffled_labels(seed=1, name="ctl")
    fresh = extract(tiny_llama, [control], progress=False, heads=True).activations["ctl"]
    calls = []
    real = directions.capture
    monkeypatch.setattr(
        directions, "capture", lambda lm, exs, **kw: calls.append(len(exs)) or real(lm, exs, **kw)
    )
    ex = extract(tiny_llama, [cs, control], progress=False, heads=True)
    assert calls == [20]  # one capture; the control's examples were not captured again
    got = ex.activations["ctl"]
    assert got.kind == "control" and got.layers == fresh.layers
    for attr in ("pos", "neg", "heads_pos", "heads_neg"):
        torch.testing.assert_close(getattr(got, attr), getattr(fresh, attr), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ex.atlas.directions["ctl"], mean_difference(fresh.pos, fresh.neg))
    assert not torch.equal(got.pos, ex.activations["c"].pos)  # some labels were swapped


def test_concepts_captured_together_equal_one_by_one(tiny_llama):
    from geomsafe.directions import capture_concept, capture_concepts

    other = [Pair(f"other {i}?", "sure " * (1 + i), "never " * (2 - i % 2)) for i in range(4)]
    chat = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "why?"})
    other.append(Pair(chat, "because", "no idea"))  # a chat prompt (message dicts)
    sets = [_concept("a", n=6), ConceptSet("b", "target", [_concept().pairs[0], *other])]
    together = capture_concepts(tiny_llama, sets, [0, 2], progress=False, heads=True)
    for cs in sets:
        alone = capture_concept(tiny_llama, cs, [0, 2], progress=False, heads=True)
        for attr in ("pos", "neg", "heads_pos", "heads_neg"):
            got, want = getattr(together[cs.name], attr), getattr(alone, attr)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        assert together[cs.name].layers == [0, 2] and together[cs.name].kind == cs.kind


def test_extract_separates_a_planted_concept(tiny_llama):
    ex = extract(tiny_llama, [_concept(n=24)], progress=False)
    assert ex.atlas.stats["c"]["best_auroc"] >= 0.9


def test_extract_bad_inputs(tiny_llama, tmp_path):
    with pytest.raises(GeomsafeError, match="no concepts"):
        extract(tiny_llama, [], progress=False)
    with pytest.raises(GeomsafeError, match="duplicate"):
        extract(tiny_llama, [_concept(), _concept()], progress=False)
    with pytest.raises(GeomsafeError, match="no atlas"):
        FeatureAtlas.load(tmp_path)


def test_best_row_breaks_saturated_ties_by_effect_size():
    from geomsafe.directions import best_row

    assert best_row([1.0, 1.0, 0.9], [2.0, 5.0, 9.0]) == 1
    assert best_row([0.7, 0.95, 0.9], [9.0, 1.0, 9.0]) == 1
    assert best_row([1.0, 1.0], [3.0, 3.0]) == 0


def test_effect_size_sign_and_scale():
    from geomsafe.directions import effect_size

    pos, neg = torch.tensor([2.0, 3.0, 4.0]), torch.tensor([0.0, 1.0, 2.0])
    assert effect_size(pos, neg) == pytest.approx(2.0)
    assert effect_size(neg, pos) == pytest.approx(-2.0)
