from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from geomsafe.artefacts import FIREWALL_RUN_JSON as RUN_JSON
from geomsafe.artefacts import GENERATIONS_JSONL
from geomsafe.cli import main
from geomsafe.evaluate.generate import SamplingConfig, generate
from geomsafe.firewall import Firewall, calibrate, run, screen
from geomsafe.formatting import Example, encode
from geomsafe.report import report
from geomsafe.testing import tiny_atlas, tiny_firewall

PROMPTS = ["What is the capital of France?", "hi", "Tell me a story about a dragon."]
SAMPLING = SamplingConfig(samples_per_prompt=2, max_new_tokens=6, temperature=1.0, batch_size=4)


def _firewall(width: int, tau: float) -> Firewall:
    return tiny_firewall(width, tau).select(["harmful_request", "pow"])


def test_monitor_keeps_the_texts_and_scores_every_generated_token(tiny_llama):
    lm = tiny_llama
    fw = _firewall(lm.d_model, 0.0)
    plain = generate(lm, PROMPTS, SAMPLING, progress=False)
    out = screen(lm, fw, PROMPTS, "monitor", SAMPLING, progress=False)
    assert [s.response for s in out] == plain.flat()
    assert [(s.id, s.sample) for s in out] == [(str(i), k) for i in range(3) for k in range(2)]
    # greedy, one prompt: the scores are those of a plain forward pass over prompt + answer
    greedy = SamplingConfig(samples_per_prompt=1, max_new_tokens=6, temperature=0.0)
    (s,) = screen(lm, fw, PROMPTS[:1], "monitor", greedy, progress=False)
    ids = torch.tensor([encode(lm.tokenizer, Example(PROMPTS[0])).input_ids])
    with torch.no_grad():
        full = lm.model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        hs = lm.model(full[:, :-1], output_hidden_states=True).hidden_states
    assert s.n_tokens == 6 and s.token_scores.shape == (5, 2)
    ref = hs[2][0, ids.shape[1] :] @ fw.checks[1].direction  # pow@1
    torch.testing.assert_close(s.token_scores[:, 1], ref, atol=1e-4, rtol=1e-3)
    ref_prompt = hs[1][0, ids.shape[1] - 1] @ fw.checks[0].direction  # harmful_request@0
    assert float(s.prompt_stat[0]) == pytest.approx(float(ref_prompt), abs=1e-4)


def test_block_returns_the_refusal_and_the_reason(tiny_llama):
    lm = tiny_llama
    fw = _firewall(lm.d_model, -1e9)
    out = screen(lm, fw, PROMPTS, "block", SAMPLING, progress=False)
    for s in out:
        assert s.blocked and s.response == "No." and s.finish == "blocked"
        assert s.verdict is not None and s.verdict.stage == "prompt"
        assert s.verdict.score > s.verdict.threshold
        assert s.prompt_score > 0


def test_run_writes_generations_and_a_summary_the_report_shows(tiny_llama, tmp_path):
    lm = tiny_llama
    fw = _firewall(lm.d_model, 0.0)
    fw.save(tmp_path / "fw")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS))
    )
    res = run(
        lm,
        tmp_path / "fw",
        str(prompts),
        "clamp",
        tmp_path / "out",
        sampling=SAMPLING,
        progress=False,
    )
    lines = [json.loads(x) for x in (tmp_path / "out" / GENERATIONS_JSONL).read_text().splitlines()]
    assert len(lines) == 6 and {x["id"] for x in lines} == {"p0", "p1", "p2"}
    assert set(lines[0]["token_scores"]) == {"harmful_request@0", "pow@1"}
    summary = json.loads((tmp_path / "out" / RUN_JSON).read_text())
    assert summary["format"] == "geomsafe.firewall_run/1" and summary["mode"] == "clamp"
    assert summary["n_flagged"] == res.n_flagged and summary["n_responses"] == 6
    page = report(tmp_path / "out").read_text()
    assert "Firewall run (clamp)" in page and "harmful_request@0" in page
    assert page.count("<svg") >= 2
    page = report(tmp_path / "fw").read_text()
    assert "Firewall calibration" in page


def test_calibrate_and_run_with_an_adapter(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    lm = tiny_llama
    peft_model = get_peft_model(lm.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    lm.model = peft_model.unload()
    fw = _firewall(lm.d_model, 0.0)
    res = run(
        lm,
        fw,
        "builtin",
        "monitor",
        adapter=tmp_path / "adapter",
        n_prompts=2,
        sampling=SAMPLING,
        progress=False,
    )
    assert len(res.screened) == 4 and res.provenance["adapter_sha256"]
    assert any("not calibrated on this adapter" in n for n in res.notes)
    assert not hasattr(lm.model, "peft_config")  # the adapter was removed again
    own = calibrate(
        lm,
        atlas=tiny_atlas(),
        adapter=tmp_path / "adapter",
        max_per_source=4,
        xstest=False,
        max_length=128,
        progress=False,
    )
    assert own.provenance["adapter_sha256"] == res.provenance["adapter_sha256"]
    res = run(
        lm,
        own,
        "builtin",
        "monitor",
        adapter=tmp_path / "adapter",
        n_prompts=1,
        sampling=SAMPLING,
        progress=False,
    )
    assert not res.notes


def _tiny_folder(lm, folder):
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder)


def test_cli_calibrate_run_report(tiny_llama, tmp_path):
    model = _tiny_folder(tiny_llama, tmp_path / "model")
    tiny_atlas().save(tmp_path / "atlas")
    r = CliRunner().invoke(
        main,
        [
            "firewall",
            "calibrate",
            "--model",
            model,
            "--atlas",
            str(tmp_path / "atlas"),
            "--out",
            str(tmp_path / "fw"),
            "--no-xstest",
            "--max-per-source",
            "4",
            "--max-length",
            "128",
            "--no-progress",
            "--fpr",
            "0.05",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "toxicity@1" in r.output and (tmp_path / "fw" / "firewall.json").is_file()
    r = CliRunner().invoke(
        main,
        [
            "firewall",
            "run",
            "--model",
            model,
            "--firewall",
            str(tmp_path / "fw"),
            "--n-prompts",
            "3",
            "--mode",
            "block",
            "--max-new-tokens",
            "4",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / RUN_JSON).is_file()
    r = CliRunner().invoke(main, ["report", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(
        main, ["firewall", "run", "--firewall", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "no firewall in" in r.output
    r = runner.invoke(main, ["serve", "--firewall", str(tmp_path), "--port", "99999"])
    assert r.exit_code == 2 and "--port" in r.output
    r = runner.invoke(main, ["firewall", "calibrate", "--out", str(tmp_path / "x"), "--fpr", "2"])
    assert r.exit_code == 2 and "fpr" in r.output
