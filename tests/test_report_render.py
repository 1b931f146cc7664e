"""The report finds results by their format stamp and refuses malformed ones in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from geomsafe.artefacts import write_json
from geomsafe.errors import GeomsafeError
from geomsafe.report import report


def _run_json(folder: Path, loss: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "provenance": {"guards": ["orthogonal"], "model_spec": "tiny"},
        "metrics": {"steps": 2, "first_loss": 2.0, "final_loss": loss},
    }
    write_json(folder / "run.json", payload, "run")


def test_report_dispatches_on_the_stamp_and_lists_skipped_results(tmp_path):
    _run_json(tmp_path / "a", 1.25)
    _run_json(tmp_path / "b", 0.5)
    stamped_other_name = tmp_path / "c" / "my_run.json"
    _run_json(tmp_path / "c", 0.75)
    (tmp_path / "c" / "run.json").rename(stamped_other_name)
    (tmp_path / "tokenizer.json").write_text('{"model": {}}')  # not a geomsafe file: ignored
    page = report(tmp_path).read_text()
    assert "1.250" in page  # the first run (a/) is shown
    assert "b/run.json (run) not shown" in page and "c/my_run.json (run) not shown" in page


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        (
            "audit.json",
            "{}",
            "audit.json is not a well-formed audit result \\(missing 'targets'\\)",
        ),
        ("audit.json", "[]", "a JSON list, not an object"),
        ("audit.json", '{"targets": 3, "cosines": 1}', "not a well-formed audit result"),
        ("risk.json", '{"concepts": [], "overall_risk": 0.1}', "not a well-formed predict result"),
        ("audit.json", b"\xff\xfe{}", "not UTF-8 text"),
        ("audit.json", b"\x89PNG\r\n\x1a\n\x00\x00", "binary file"),
        ("eval.json", '{"format": "geomsafe.eval/9"}', "newer geomsafe"),
        ("bench.json", '{"format": "geomsafe.audit/1"}', "not a geomsafe bench file"),
    ],
)
def test_malformed_results_are_one_line_errors(tmp_path, name, content, match):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(GeomsafeError, match=match) as info:
        report(tmp_path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "report.html").exists()


def test_no_results_is_an_error(tmp_path):
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(GeomsafeError, match="no geomsafe results"):
        report(tmp_path)


def test_rendering_imports_no_trainer(tmp_path):
    bench = {
        "config": {"shift_concept": "toxicity"},
        "provenance": {"model_spec": "tiny"},
        "rows": [],
        "correlations": {},
        "shift_correlations": {},
    }
    write_json(tmp_path / "bench.json", bench, "bench")
    _run_json(tmp_path, 1.0)
    code = (
        "import sys\n"
        "from geomsafe.report import report\n"
        f"report({str(tmp_path)!r})\n"
        "print(sorted(m for m in sys.modules if m.startswith(('transformers', 'peft', 'torch'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_training_log_alone_is_shown_and_a_truncated_one_named(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    rows = [{"step": s, "loss": 2.0 - 0.1 * s} for s in (1, 2, 3)]
    (good / "geometry_log.jsonl").write_text("".join(f"{json.dumps(r)}\n" for r in rows))
    assert report(good).is_file()
    (bad / "geometry_log.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    with pytest.raises(GeomsafeError, match=r"geometry_log\.jsonl:2: not valid JSON"):
        report(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeomsafeError, match="no geomsafe results .* and for geometry_log.jsonl"):
        report(tmp_path / "empty")
