from __future__ import annotations

import json
import math

import pytest
import torch

from geomsafe.artefacts import FIREWALL_JSON, format_tag
from geomsafe.errors import GeomsafeError
from geomsafe.firewall.config import Check, Firewall


def _fw(tau: float = 0.5) -> Firewall:
    g = torch.Generator().manual_seed(0)
    d = [torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0) for _ in range(3)]
    return Firewall(
        [
            Check("harmful_request", 2, d[0], "last_prompt", "request", tau, 0.1, 0.5),
            Check("toxicity", 3, d[1], threshold=tau, benign_std=2.0),
            Check("deception", 3, d[2]),
        ],
        fpr=0.02,
        calibration={"q": 0.99},
        provenance={"model_spec": "tiny"},
    )


def test_save_and_load_round_trip(tmp_path):
    fw = _fw()
    fw.save(tmp_path)
    meta = json.loads((tmp_path / FIREWALL_JSON).read_text())
    assert meta["format"] == "geomsafe.firewall/1" and meta["geomsafe_version"]
    assert meta["checks"][2]["threshold"] == "inf"
    back = Firewall.load(tmp_path)
    assert back.keys == fw.keys and back.fpr == 0.02 and back.provenance == fw.provenance
    for a, b in zip(back.checks, fw.checks, strict=True):
        assert torch.equal(a.direction, b.direction)
        assert (a.threshold, a.tokens, a.source, a.benign_std) == (
            b.threshold,
            b.tokens,
            b.source,
            b.benign_std,
        )
    assert math.isinf(back.checks[2].threshold) and not back.calibrated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["firewall.json", "firewall.safetensors"]


def test_load_rejects_what_is_not_a_firewall(tmp_path):
    with pytest.raises(GeomsafeError, match="no firewall"):
        Firewall.load(tmp_path)
    _fw().save(tmp_path)
    meta = json.loads((tmp_path / FIREWALL_JSON).read_text())
    (tmp_path / FIREWALL_JSON).write_text(json.dumps({**meta, "format": "other/1"}))
    with pytest.raises(GeomsafeError, match="format"):
        Firewall.load(tmp_path)
    (tmp_path / FIREWALL_JSON).write_text(json.dumps({**meta, "format": "geomsafe.firewall/2"}))
    with pytest.raises(GeomsafeError, match="written by a newer geomsafe"):
        Firewall.load(tmp_path)
    unstamped = {k: v for k, v in meta.items() if k != "format"}
    (tmp_path / FIREWALL_JSON).write_text(json.dumps(unstamped))  # every firewall.json has one
    with pytest.raises(GeomsafeError, match="no format stamp"):
        Firewall.load(tmp_path)
    (tmp_path / FIREWALL_JSON).write_text(json.dumps({**meta, "geomsafe_version": "0.0.1"}))
    assert Firewall.load(tmp_path).keys == _fw().keys  # an older geomsafe's file reads
    stamp = format_tag("firewall")
    (tmp_path / FIREWALL_JSON).write_text(json.dumps({"format": stamp, "checks": [{}]}))
    with pytest.raises(GeomsafeError, match="malformed"):
        Firewall.load(tmp_path)
    (tmp_path / FIREWALL_JSON).write_text("{not json")
    with pytest.raises(GeomsafeError, match="not valid JSON"):
        Firewall.load(tmp_path)
    (tmp_path / "firewall.safetensors").write_bytes(b"junk")
    (tmp_path / FIREWALL_JSON).write_text(json.dumps(meta))
    with pytest.raises(GeomsafeError, match="unreadable"):
        Firewall.load(tmp_path)


def test_statistic_reads_the_positions_of_each_rule():
    fw = _fw()
    # 6 tokens: 4 of prompt, then 2 generated tokens fed back; skip_first = 1
    scores = torch.tensor(
        [
            [9.0, 9.0, 9.0],
            [1.0, 5.0, 0.0],
            [2.0, 1.0, 0.0],
            [3.0, 2.0, 7.0],
            [4.0, 3.0, 1.0],
            [5.0, 0.5, 2.0],
        ]
    )
    seq = fw.statistic(scores, 4, "sequence")
    assert seq.tolist() == [3.0, 3.0, 7.0]  # last prompt token; max from it on
    assert fw.statistic(scores, 4, "prompt").tolist() == [3.0, 2.0, 7.0]
    resp = fw.statistic(scores, 4, "response")
    assert math.isnan(resp[0]) and resp[1:].tolist() == [3.0, 2.0]
    assert torch.isnan(fw.statistic(scores[:4], 4, "response")).all()


def test_margins_and_score():
    fw = _fw(tau=1.0)
    stat = torch.tensor([2.0, 1.0, math.nan])
    m = fw.margins(stat)
    assert m[0] == pytest.approx(2.0) and m[1] == pytest.approx(0.0) and math.isnan(m[2])
    assert fw.score(stat) == pytest.approx(2.0)
    assert fw.score(torch.full((3,), math.nan)) == -math.inf


def test_invalid_checks_and_firewalls_cannot_exist():
    d = torch.ones(4) / 2
    with pytest.raises(GeomsafeError, match="tokens"):
        Check("x", 0, d, tokens="all")
    with pytest.raises(GeomsafeError, match="source"):
        Check("x", 0, d, source="sae")
    with pytest.raises(GeomsafeError, match="benign_std"):
        Check("x", 0, d, benign_std=0.0)
    with pytest.raises(GeomsafeError, match="at least one"):
        Firewall([])
    with pytest.raises(GeomsafeError, match="duplicate"):
        Firewall([Check("x", 0, d), Check("x", 0, d)])
    with pytest.raises(GeomsafeError, match="width"):
        Firewall([Check("x", 0, d), Check("y", 0, torch.ones(5))])
    with pytest.raises(GeomsafeError, match="fpr"):
        Firewall([Check("x", 0, d)], fpr=0.0)


def test_select_and_clampable():
    fw = _fw()
    assert fw.select(["toxicity"]).keys == ["toxicity@3"]
    assert fw.select(["harmful_request@2"]).keys == ["harmful_request@2"]
    assert [c.clampable for c in fw.checks] == [False, True, True]
    with pytest.raises(GeomsafeError, match="no check"):
        fw.select(["nope"])
