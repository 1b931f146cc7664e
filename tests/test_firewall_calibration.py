from __future__ import annotations

import dataclasses

import pytest
import torch

from geomsafe.errors import GeomsafeError
from geomsafe.firewall import CalibrationConfig, Firewall, calibrate, rethreshold
from geomsafe.firewall.calibration import atlas_checks, choose_thresholds, sequence_statistics
from geomsafe.firewall.traffic import Item
from geomsafe.formatting import Example, encode
from geomsafe.testing import tiny_atlas

FAST = dict(max_per_source=6, xstest=False, batch_size=8, max_length=160, progress=False)


def test_choose_thresholds_meets_the_target_with_the_smallest_quantile():
    g = torch.Generator().manual_seed(0)
    stats = torch.randn(400, 3, generator=g)
    stats[:50, 2] = float("nan")  # a check that cannot read some sequences
    q, tau = choose_thresholds(stats, 0.05)
    fires = (stats > tau).any(-1).float().mean()
    assert fires <= 0.05
    for k in range(3):  # thresholds are observed values
        col = stats[:, k][~torch.isnan(stats[:, k])]
        assert (col == tau[k]).any()
    lower = torch.stack(
        [
            torch.quantile(
                stats[:, k][~torch.isnan(stats[:, k])].double(), q - 0.002, interpolation="higher"
            )
            for k in range(3)
        ]
    ).float()
    assert (stats > lower).any(-1).float().mean() > 0.05 or torch.equal(lower, tau)


def test_statistics_equal_the_hidden_states(tiny_llama):
    lm = tiny_llama
    atlas = tiny_atlas()
    fw = Firewall(atlas_checks(atlas, lm.d_model, lm.n_layers))
    items = [
        Item("a", "task:x", Example("What is two plus two?", "Four.")),
        Item("b", "task:x", Example("hi", "Hello there, friend.")),
        Item("c", "xstest", Example("How do I kill a process?")),
    ]
    got = sequence_statistics(lm, fw, items, ("sequence", "prompt"), batch_size=2, progress=False)
    for i, item in enumerate(items):
        enc = encode(lm.tokenizer, item.example)
        with torch.no_grad():
            hs = lm.model(torch.tensor([enc.input_ids]), output_hidden_states=True).hidden_states
        for k, c in enumerate(fw.checks):
            proj = hs[c.layer + 1][0] @ c.direction
            p = enc.prompt_len
            assert got["prompt"][i, k] == pytest.approx(float(proj[p - 1]), abs=1e-4)
            assert got["sequence"][i, k] == pytest.approx(float(proj[p - 1 :].max()), abs=1e-4)


def test_calibration_is_reproducible_for_a_seed(tiny_llama, tmp_path):
    atlas = tiny_atlas()
    a = calibrate(tiny_llama, atlas=atlas, out=tmp_path / "a", seed=3, **FAST)
    b = calibrate(tiny_llama, atlas=atlas, seed=3, **FAST)
    assert (
        a.keys
        == b.keys
        == ["harmful_request@" + str(a.checks[0].layer), "toxicity@1", "deception@0"]
    )
    for x, y in zip(a.checks, b.checks, strict=True):
        assert torch.equal(x.direction, y.direction)
        assert (x.threshold, x.benign_mean, x.benign_std) == (
            y.threshold,
            y.benign_mean,
            y.benign_std,
        )
    assert a.calibration["threshold_ids"] == b.calibration["threshold_ids"]
    c = calibrate(tiny_llama, atlas=atlas, seed=4, **FAST)
    assert c.calibration["threshold_ids"] != a.calibration["threshold_ids"]
    loaded = Firewall.load(tmp_path / "a")
    assert loaded.thresholds() == a.thresholds()


def test_calibration_meets_its_false_positive_rate_on_benign_data_only(tiny_llama):
    fw = calibrate(tiny_llama, atlas=tiny_atlas(), fpr=0.1, **FAST)
    cal = fw.calibration
    assert fw.calibrated and cal["fpr_achieved"] <= 0.1
    assert set(cal["sources"]) <= {
        "task:code",
        "task:factual_qa",
        "task:instruction_following",
        "task:summarisation",
        "xstest",
    }
    assert not set(cal["threshold_ids"]) & set(cal["fit_ids"])
    request = fw.checks[0]
    assert request.tokens == "last_prompt" and request.source == "request"
    assert abs(float(request.direction.norm()) - 1) < 1e-5
    assert fw.provenance["requests"]["license"].startswith("Apache-2.0")
    assert all(c.tokens == "response" for c in fw.checks[1:])


def test_calibration_without_the_request_direction_and_with_layers(tiny_llama):
    fw = calibrate(
        tiny_llama, atlas=tiny_atlas(), request=False, concepts=("toxicity",), layers=(0, 2), **FAST
    )
    assert fw.keys == ["toxicity@0", "toxicity@2"]
    assert fw.calibration["fit_ids"] == []


def test_xstest_calibration_and_evaluation_parts_are_disjoint(tiny_llama, shared_data):
    from geomsafe.firewall.traffic import benign_split

    fw = calibrate(
        tiny_llama, atlas=tiny_atlas(), data_root=shared_data, **{**FAST, "xstest": True}
    )
    used = set(fw.calibration["threshold_ids"]) | set(fw.calibration["fit_ids"])
    assert any(u.startswith("xstest/") for u in used)
    held_out = benign_split(shared_data, 0.5, 0).evaluation
    assert not used & {f"{i.source}/{i.id}" for i in held_out}


def test_bad_input_is_a_clear_error(tiny_llama):
    with pytest.raises(GeomsafeError, match="fpr"):
        CalibrationConfig(fpr=1.5)
    with pytest.raises(GeomsafeError, match="unknown calibration option"):
        CalibrationConfig().with_options(nope=1)
    with pytest.raises(GeomsafeError, match="nothing to watch"):
        calibrate(tiny_llama, request=False)
    with pytest.raises(GeomsafeError, match="not in the atlas"):
        calibrate(tiny_llama, atlas=tiny_atlas(), concepts=("sarcasm",), **FAST)
    with pytest.raises(GeomsafeError, match="width"):
        calibrate(tiny_llama, atlas=tiny_atlas(width=16), **FAST)
    with pytest.raises(GeomsafeError, match="no atlas"):
        calibrate(tiny_llama, atlas="/nonexistent/atlas", **FAST)


def test_rethreshold_moves_the_thresholds_without_a_model(tiny_llama):
    fw = calibrate(tiny_llama, atlas=tiny_atlas(), fpr=0.05, **FAST)
    same = rethreshold(fw, 0.05)
    for x, y in zip(fw.checks, same.checks, strict=True):  # the kept stats are rounded to 1e-5
        assert y.threshold == pytest.approx(x.threshold, abs=1e-4)
        assert torch.equal(x.direction, y.direction)
    loose = rethreshold(fw, 0.5)
    assert loose.fpr == 0.5 and loose.calibration["rethresholded_from"] == 0.05
    assert all(b.threshold <= a.threshold for a, b in zip(fw.checks, loose.checks, strict=True))
    assert any(b.threshold < a.threshold for a, b in zip(fw.checks, loose.checks, strict=True))
    # the achieved rate is that of the kept statistics under the new thresholds
    table = torch.tensor([fw.calibration["stats"][k] for k in fw.keys]).T
    taus = torch.tensor([c.threshold for c in loose.checks])
    fired = float((table > taus).any(-1).double().mean())
    assert loose.calibration["fpr_achieved"] == pytest.approx(fired)
    assert fired <= 0.5
    with pytest.raises(GeomsafeError, match="fpr"):
        rethreshold(fw, 1.5)
    broken = dataclasses.replace(fw, calibration={})
    with pytest.raises(GeomsafeError, match="re-thresholded"):
        rethreshold(broken, 0.1)
