from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from geomsafe.audit import audit
from geomsafe.cli import main
from geomsafe.errors import GeomsafeError
from geomsafe.predict import predict
from geomsafe.report import report
from geomsafe.testing import tiny_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def _concepts(folder: Path) -> list[str]:
    specs = []
    for name, kind, pos, neg in [
        ("rude", "harmful", "you idiot", "thank you"),
        ("lies", "harmful", "moon is cheese", "moon is rock"),
        ("helpful", "target", "here are facts", "no idea"),
    ]:
        rows = [{"concept": name, "kind": kind}] + [
            {"prompt": f"q{i} about {i * 7}", "positive": f"{pos} {i}", "negative": f"{neg} {i}"}
            for i in range(12)
        ]
        path = folder / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows))
        specs.append(str(path))
    return specs


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("results")
    lm = tiny_model("llama")
    res = audit(
        lm, concepts=_concepts(folder), out=folder / "audit", n_perm=30, n_boot=30, progress=False
    )
    data = folder / "d.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"prompt": f"p{i}", "completion": "you idiot " * 3}) for i in range(10)
        )
    )
    predict(
        lm,
        data,
        atlas=res.atlas,
        out=folder / "predict",
        max_new_tokens=4,
        gradient=False,
        progress=False,
    )
    (folder / "audit" / "geometry_log.jsonl").write_text(
        "\n".join(
            json.dumps({"step": i, "loss": 2.0 - 0.1 * i, "penalty": 0.01, "proj/rude": 0.1 * i})
            for i in range(5)
        )
    )
    return folder


def test_report_is_self_contained(results):
    path = report(results)
    page = path.read_text()
    assert path == results / "report.html"
    for section in (
        "Scorecard",
        "Recommendation",
        "Overlap per layer with null band",
        "Cosine heatmap",
        "Superposition density",
        "Data-set risk",
        "Riskiest examples",
        "Training",
        "Provenance",
    ):
        assert section in page, section
    assert page.count("<svg") >= 6
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page


def test_report_errors(tmp_path):
    with pytest.raises(GeomsafeError, match="no geomsafe results"):
        report(tmp_path)
    with pytest.raises(GeomsafeError, match="not a folder"):
        report(tmp_path / "missing")
    (tmp_path / "audit.json").write_text("{bad")
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not valid JSON" in result.output
    assert not (tmp_path / "report.html").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package 'chromium' is not installed")
def test_report_renders_in_headless_chromium(results, tmp_path):
    path = report(results)
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1100,2400",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    assert shot.is_file() and shot.stat().st_size > 20_000
    keep = Path(__file__).parent / "artifacts"
    keep.mkdir(exist_ok=True)
    shutil.copy(shot, keep / "report.png")
