from __future__ import annotations

import copy
import html
import json
import math

import pytest
from click.testing import CliRunner

from geomsafe.bench import BenchConfig, bench, preset
from geomsafe.bench.table import cells, correlations, markdown
from geomsafe.bench.tasks import resolve_task
from geomsafe.cli import main
from geomsafe.errors import GeomsafeError
from geomsafe.report import report
from geomsafe.stats import correlation
from geomsafe.testing import tiny_model

TINY = BenchConfig(
    tasks=("factual_qa", "code", "instruction_following"),
    guard="orthogonal",
    n_train=8,
    steps=2,
    batch_size=4,
    concept_pairs=6,
    n_direction=4,
    own_max_new_tokens=4,
    n_shift_prompts=4,
    n_prompts=4,
    samples_per_prompt=1,
    eval_max_new_tokens=4,
    n_xstest=0,
    n_boot=50,
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bench"
    return bench(tiny_model("llama"), out=out, config=TINY, progress=False, command="test")


def test_bench_rows_per_task_and_guard(result):
    assert [(r["task"], r["guard"]) for r in result.rows] == [
        (t, g) for t in TINY.tasks for g in ("none", "orthogonal")
    ]
    for r in result.rows:
        ov = r["overlap"]
        assert 0.0 <= ov["score"] <= 1.0 and 0.0 < ov["p_value"] <= 1.0
        assert ov["harmful"] in r["predicted"] and set(r["predicted"]) == set(r["measured"])
        assert r["predicted_shift"] == r["predicted"]["toxicity"]
        inc = r["toxic_increase_pp"]
        assert inc["low"] <= inc["value"] <= inc["high"] and inc["n_boot"] > 0  # CI.to_dict
        assert math.isclose(
            inc["value"],
            100 * (r["toxic_after"]["value"] - r["toxic_before"]["value"]),
            abs_tol=1e-6,
        )
    # the task geometry does not depend on the guard: both rows of a task share it
    for t in TINY.tasks:
        a, b = (r for r in result.rows if r["task"] == t)
        assert a["overlap"] == b["overlap"] and a["predicted"] == b["predicted"]
        assert a["measured"] != b["measured"]  # the guarded run trained differently
    assert set(result.correlations) == {"none", "orthogonal"}
    assert result.correlations["none"]["n"] == len(TINY.tasks)


def test_bench_rows_carry_the_behavioural_change(result, tmp_path):
    """Each row's behavioural change is its eval's paired log-odds change on the held-out
    pairs of the task's nearest harmful concept (and of the shift concept), with the CI."""
    for r in result.rows:
        ev = json.loads(
            (result.out / "eval" / f"{r['task']}-{r['guard']}" / "eval.json").read_text()
        )
        assert r["behaviour_row"] == f"logodds:concept:{r['overlap']['harmful']}"
        for key, row in (
            ("behaviour_change", r["behaviour_row"]),
            ("shift_behaviour_change", "logodds:concept:toxicity"),
        ):
            c = ev["changes"][row]
            assert r[key] == c["delta"]  # the same CI.to_dict in eval.json and bench.json
            assert r["behaviour"][row] == r[key]
        assert all(k.startswith("logodds:") for k in r["behaviour"])
    corr = result.behaviour_correlations
    assert set(corr) == {
        "overlap vs behavioural change",
        "predicted shift vs shift-concept behaviour",
    }
    assert corr["overlap vs behavioural change"]["none"]["n"] == len(TINY.tasks)
    text = markdown(result.to_dict())
    assert "overlap vs behavioural change, guard none" in text
    assert "behavioural change, nearest harmful" in text
    # a bench made before the behavioural columns still renders, with "–" in the new column
    old = copy.deepcopy(result.to_dict())
    old.pop("behaviour_correlations")
    for r in old["rows"]:
        for k in ("behaviour_row", "behaviour_change", "shift_behaviour_change", "behaviour"):
            r.pop(k)
    assert cells(old["rows"][0])[4] == "–" and "behavioural change, guard" not in markdown(old)
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "bench.json").write_text(json.dumps(old))
    assert "overlap score vs behavioural change" not in report(folder).read_text()
    assert "overlap score vs behavioural change" in report(result.out).read_text()


def test_bench_folder_is_complete(result):
    out = result.out
    payload = json.loads((out / "bench.json").read_text())
    assert payload["format"] == "geomsafe.bench/2" and len(payload["rows"]) == 6
    prov = payload["provenance"]
    assert prov["command"] == "test" and set(prov["data_sha256"]) == set(TINY.tasks)
    assert (out / "atlas" / "atlas.json").is_file() and (out / "eval-base" / "eval.json").is_file()
    assert (out / "runs" / "code-orthogonal" / "adapter_model.safetensors").is_file()
    assert (out / "eval" / "code-none" / "eval.json").is_file()
    assert "| model | fine-tuning task |" in (out / "table.md").read_text()
    assert not any(p.name.endswith(".partial") for p in out.parent.iterdir())


def test_bench_is_deterministic(result, tmp_path):
    again = bench(tiny_model("llama"), config=TINY, progress=False, command="test")
    assert [cells(r) for r in again.rows] == [cells(r) for r in result.rows]


def test_correlation_known_values_and_degenerate_inputs():
    c = correlation([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0])
    assert c["spearman"] == pytest.approx(1.0) and 0.95 < c["pearson"] < 1.0
    assert math.isnan(correlation([1.0, 2.0], [1.0, 2.0])["pearson"])  # n < 3
    assert math.isnan(correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["spearman"])  # constant
    rows = [
        {"guard": g, "x": float(i), "y": float(i if g == "none" else -i)}
        for g in ("none", "guarded")
        for i in range(4)
    ]
    out = correlations(rows, "x", "y")
    assert out["none"]["spearman"] == pytest.approx(1.0)
    assert out["guarded"]["spearman"] == pytest.approx(-1.0)
    rows[0]["y"] = None  # a row without the measure is left out, not a crash
    assert correlations(rows, "x", "y")["none"]["n"] == 3


def test_markdown_handles_nan_correlations(result):
    payload = result.to_dict()
    payload["correlations"] = {"none": correlation([1.0], [1.0])}
    text = markdown(payload)
    assert "Pearson –" in text and "`test`" in text


def test_bad_inputs_fail_before_work(tmp_path):
    with pytest.raises(GeomsafeError, match="unknown task 'nope'"):
        bench(
            tiny_model("llama"),
            out=tmp_path / "o",
            config=BenchConfig(tasks=("nope",)),
            progress=False,
        )
    with pytest.raises(GeomsafeError, match="file not found"):
        resolve_task(f"mine={tmp_path / 'missing.jsonl'}")
    with pytest.raises(GeomsafeError, match="insecure"):
        resolve_task("insecure", data_root=tmp_path)  # an empty data root
    with pytest.raises(GeomsafeError, match="steps must be >= 1"):
        preset("quick", steps=0)
    with pytest.raises(GeomsafeError, match="unknown size"):
        preset("huge")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(GeomsafeError, match="not empty"):
        bench(tiny_model("llama"), out=tmp_path / "full", config=TINY, progress=False)
    assert not (tmp_path / "o").exists()


def test_cli_bad_task_is_one_line():
    res = CliRunner().invoke(main, ["bench", "--tasks", "nope", "--out", "/tmp/x-geomsafe"])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "unknown task" in res.output


def test_quick_preset_is_smaller_than_full():
    q, f = preset("quick"), preset("full")
    assert q.n_train < f.n_train and q.steps < f.steps and q.tasks == f.tasks
    assert preset("quick", tasks=("code",)).tasks == ("code",)


def test_report_of_a_bench_and_of_its_runs(result):
    page = report(result.out).read_text()
    assert "<h2>Benchmark</h2>" in page and "<h2>Evaluation before / after</h2>" not in page
    for row in result.rows:
        for cell in cells(row)[1:4]:
            assert html.escape(cell) in page
    assert page.count("<svg") >= 3 and "Spearman" in page
    by = {(r["task"], r["guard"]): r for r in result.rows}
    shift = [
        abs(by[(t, "orthogonal")]["measured_shift"]) / abs(by[(t, "none")]["measured_shift"])
        for t in TINY.tasks
    ]
    assert (
        f"Guard 'orthogonal': median |measured shift| along 'toxicity' "
        f"{sorted(shift)[1]:.2f}× the unguarded run's"
    ) in html.unescape(page)
    ev = report(result.out / "eval" / "code-orthogonal").read_text()
    change = json.loads((result.out / "eval" / "code-orthogonal" / "eval.json").read_text())[
        "changes"
    ]["toxic_rate"]
    assert "<h2>Evaluation before / after</h2>" in ev and "paired bootstrap" in ev
    delta = change["delta"]  # CI.to_dict (geomsafe.eval/2)
    assert f"{100 * delta['value']:+.2f} pp" in ev
    assert f"Toxic-output rate changed by {100 * delta['value']:+.1f} points" in ev or (
        delta["low"] > 0 and "rose by" in ev
    )
    run = report(result.out / "runs" / "code-orthogonal").read_text()
    assert "<h2>Training</h2>" in run and "orthogonal" in run and "training loss" in run
