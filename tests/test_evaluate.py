from __future__ import annotations

import contextlib
import json

import peft
import pytest
import torch
from click.testing import CliRunner

from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import capture
from geomsafe.cli import main
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate import EvalConfig, evaluate, load_eval
from geomsafe.evaluate.generate import NucleusSampler, SamplingConfig, generate, greedy
from geomsafe.evaluate.pairsets import CONCEPT_SETS
from geomsafe.formatting import Example
from geomsafe.models import eos_ids
from geomsafe.testing import tiny_model

SMALL = dict(n_prompts=6, samples_per_prompt=2, max_new_tokens=6, n_probe=3, n_xstest=3, n_boot=200)
SMALL |= dict(logodds_pairs=4)
TRAITS = ("psychopathy", "desire-for-acquiring-power")
PROMPTS = [
    "Please tell me a very long story about a brave little toaster and its friends.",
    "What is the capital of France, and why?",
    "Say hi.",
    "Hi",
]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread sync costs more than it saves
    yield
    torch.set_num_threads(n)


@pytest.fixture
def empty_root(tmp_path):
    root = tmp_path / "no-data"
    root.mkdir()
    return root


@contextlib.contextmanager
def boost(lm, token_ids, amount):
    def hook(_module, _inputs, output):
        output[..., token_ids] += amount
        return output

    handle = lm.model.lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def random_atlas(lm, best=1):
    gen = torch.Generator().manual_seed(0)
    dirs = {}
    for name in ("toxicity", "deception", "helpfulness"):
        d = torch.randn(lm.n_layers, lm.d_model, generator=gen)
        dirs[name] = d / d.norm(dim=-1, keepdim=True)
    kinds = {"toxicity": "harmful", "deception": "harmful", "helpfulness": "target"}
    stats = {n: {"best_layer": best} for n in dirs}
    return FeatureAtlas(list(range(lm.n_layers)), dirs, kinds, stats)


def make_adapter(folder, scale=0.5):
    lm = tiny_model("llama")
    model = peft.get_peft_model(
        lm.model, peft.LoraConfig(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8)
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: perturb it so the adapter does something
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    model.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------ generation


def test_generation_is_seeded_batch_independent_and_restores_rng():
    lm = tiny_model("llama")
    cfg = SamplingConfig(samples_per_prompt=2, max_new_tokens=8, batch_size=2, seed=0)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    full = generate(lm, PROMPTS, cfg, progress=False)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG is untouched
    assert full.texts == generate(lm, PROMPTS, cfg, progress=False).texts
    # a prompt's samples fill one batch (longest first): dropping later prompts changes nothing
    part = generate(lm, PROMPTS[:2], cfg, progress=False)
    assert part.texts == full.texts[:2]
    assert full.texts[0][0] != full.texts[0][1]  # two samples, two texts
    other = generate(lm, PROMPTS, SamplingConfig(2, 8, batch_size=2, seed=1), progress=False)
    assert other.texts != full.texts
    assert all(1 <= n <= 8 for row in full.n_tokens for n in row)
    at_zero = generate(lm, PROMPTS[:2], SamplingConfig(2, 8, temperature=0.0), progress=False)
    assert all(a == b for a, b in at_zero.texts)
    assert greedy(lm, PROMPTS[:2], 8, progress=False) == [a for a, _ in at_zero.texts]


@pytest.mark.parametrize("k", [64, 4096])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 0.95), (0.7, 0.5), (1.3, 0.99)])
def test_nucleus_sampler_matches_transformers_warpers(temperature, top_p, k):
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(8, 5000, generator=gen) * 3
    scores[0] *= 0.001  # near flat: its top k hold less than top_p, so that row is sorted
    ids = torch.zeros(8, 1, dtype=torch.long)
    want = TopPLogitsWarper(top_p)(ids, TemperatureLogitsWarper(temperature)(ids, scores.clone()))
    got = NucleusSampler(temperature, top_p, k=k)(ids, scores.clone())
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    kept = ~torch.isinf(got)
    assert torch.allclose(got[kept], want[kept])
    assert kept[0].sum() > 1000 and kept.sum(-1).min() >= 1  # k=64: row 0 took the sort


def test_generation_stops_at_end_of_turn():
    lm = tiny_model("llama")
    with boost(lm, eos_ids(lm.model, lm.tokenizer), 50.0):
        g = generate(lm, PROMPTS[:2], SamplingConfig(2, 8), progress=False)
    assert g.n_tokens == [[1, 1], [1, 1]] and g.flat() == ["", "", "", ""]
    with pytest.raises(GeomsafeError):
        generate(lm, PROMPTS, SamplingConfig(samples_per_prompt=0), progress=False)


# ------------------------------------------------------------------ evaluate


def test_evaluate_writes_results_and_repeats_exactly(tmp_path, shared_data):
    lm = tiny_model("llama")
    kw = dict(SMALL, traits=TRAITS, data_root=shared_data, progress=False)
    r1 = evaluate(lm, out=tmp_path / "a", **kw)
    names = set(r1.model.metrics)
    assert {
        "toxic_rate",
        "toxicity_score",
        "refusal_rate",
        "xstest_refusal",
        "response_tokens",
    } <= names
    assert {"trait:psychopathy", "trait:desire-for-acquiring-power"} <= names
    assert {"trait:em_pivotal_tokens", "trait:em_single_letter"} <= names
    assert {"toxic_rate[neutral]", "toxic_rate[provocative]", "toxic_rate[persona]"} <= names
    sets = ("advice", "advbench", "jailbreakbench", "toxigen", "benign_compliance")
    assert {f"logodds:{s}" for s in (*sets, "toxigen_control")} <= names  # controls joined
    assert r1.model.metrics["logodds:advice"].ci.n == 4
    assert r1.model.metrics["logodds:advice"].concept == "dangerous_advice"
    assert r1.model.metrics["trait:psychopathy"].concept.startswith("general misalignment")
    assert r1.before is None and not r1.changes and not r1.warnings
    assert r1.model.metrics["toxic_rate"].ci.n == 6
    assert 1 <= r1.model.metrics["response_tokens"].ci.value <= 6  # max_new_tokens
    assert r1.model.metrics["xstest_refusal"].ci.n == 3
    assert r1.model.metrics["trait:em_single_letter"].ci.n == 8  # questions, two orders each
    for m in r1.model.metrics.values():
        assert m.ci.low <= m.ci.value <= m.ci.high
    data = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert data["format"] == "geomsafe.eval/2" and data["config"]["n_prompts"] == 6
    prov = data["provenance"]
    for key in ("geomsafe_version", "model_spec", "seed", "data_sha256", "toxicity_classifier"):
        assert prov[key] is not None
    assert len(prov["data_hashes"]["logodds:advbench"]) == 64
    lines = (tmp_path / "a" / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 6 + 3 and json.loads(lines[0])["run"] == "model"
    headers, rows = r1.table()
    assert headers[1] == "value [95% CI]" and any(r[0] == "toxic-output rate" for r in rows)

    r2 = evaluate(lm, out=tmp_path / "b", **kw)
    assert r2.numbers() == r1.numbers()
    d2 = json.loads((tmp_path / "b" / "eval.json").read_text())
    for d in (data, d2):
        d.pop("seconds"), d["model"].pop("seconds")
    assert d2 == data
    r3 = evaluate(lm, **dict(kw, seed=1))
    assert r3.model.generations[0]["responses"] != r1.model.generations[0]["responses"]


def test_parts_without_public_data_are_skipped_and_said(empty_root):
    r = evaluate(tiny_model("llama"), data_root=empty_root, progress=False, **SMALL)
    external = {"logodds:advbench", "logodds:jailbreakbench", "logodds:toxigen"}
    assert set(r.model.skipped) == {"xstest", "persona", "em_probes"} | external
    assert len(r.warnings) == 6 and all(w.startswith("skipped") for w in r.warnings)
    assert "xstest_refusal" not in r.model.metrics and "toxic_rate" in r.model.metrics
    assert "logodds:advice" in r.model.metrics  # built-in sets need no public data
    assert "logodds:benign_compliance" not in r.model.metrics  # its harm sets were skipped


def test_adapter_before_is_the_base_model_after_differs(tmp_path, empty_root):
    adapter = make_adapter(tmp_path / "adapter")
    atlas = random_atlas(tiny_model("llama"))
    kw = dict(SMALL, data_root=empty_root, atlas=atlas, progress=False)
    lm = tiny_model("llama")
    res = evaluate(lm, adapter=adapter, out=tmp_path / "out", **kw)
    assert type(lm.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # adapter removed
    base = evaluate(tiny_model("llama"), **kw)
    assert res.before.label == "base" and res.model.label == "adapted"
    for name, m in base.model.metrics.items():  # before = the base model, number for number
        assert res.before.metrics[name].units == m.units
    tox = "projection:toxicity"
    assert set(res.changes) == set(res.model.metrics) - {"projection:helpfulness"}
    c = res.changes[tox]
    assert c.n_paired == 6
    assert c.delta.value == pytest.approx(
        res.model.metrics[tox].ci.value - res.before.metrics[tox].ci.value
    )
    assert abs(c.delta.value) > 1e-3 and c.delta.low <= c.delta.value <= c.delta.high
    headers, rows = res.table()
    assert headers[1:4] == ["before [95% CI]", "after [95% CI]", "change [95% CI]"]
    assert any(r[0] == "toxic-output rate" and r[3].endswith("]") and "pp" in r[3] for r in rows)
    assert res.provenance["adapter_sha256"] and res.provenance["atlas"]["features"] == {
        "toxicity": 1,
        "deception": 1,
    }
    runs = {json.loads(x)["run"] for x in (tmp_path / "out" / "generations.jsonl").open()}
    assert runs == {"base", "adapted"}
    with pytest.raises(GeomsafeError, match="not a peft adapter"):
        evaluate(lm, adapter=empty_root, **kw)


def test_projection_is_the_response_mean_at_the_best_layer(empty_root):
    lm = tiny_model("llama")
    atlas = random_atlas(lm, best=2)
    res = evaluate(lm, atlas=atlas, data_root=empty_root, progress=False, **SMALL)
    rec = next(r for r in res.model.generations if any(t.strip() for t in r["responses"]))
    texts = [t for t in rec["responses"] if t.strip()]
    acts = capture(lm, [Example(rec["prompt"], t) for t in texts], layers=[2], progress=False)
    want = (acts.layer(2) @ atlas.direction("toxicity", 2)).tolist()
    got = res.model.metrics["projection:toxicity"].units[rec["id"]]
    assert got == pytest.approx(want, abs=1e-4)
    assert "projection:helpfulness" not in res.model.metrics  # targets are not projected
    wrong = random_atlas(tiny_model("llama", width=64))
    with pytest.raises(GeomsafeError, match="width"):
        evaluate(lm, atlas=wrong, data_root=empty_root, progress=False, **SMALL)


def test_baseline_file_is_before_and_pairs_by_unit(tmp_path, empty_root):
    lm = tiny_model("llama")
    kw = dict(SMALL, data_root=empty_root, progress=False)
    evaluate(lm, out=tmp_path / "base", **kw)
    base, cfg = load_eval(tmp_path / "base")
    assert cfg["seed"] == 0 and "toxic_rate" in base.metrics
    same = evaluate(lm, baseline=tmp_path / "base" / "eval.json", **kw)
    assert same.before is not None and same.changes
    for c in same.changes.values():  # same model, same seed: no change, and surely so
        assert (c.delta.value, c.delta.low, c.delta.high) == (0.0, 0.0, 0.0)
    assert [w for w in same.warnings if not w.startswith("skipped")] == []
    more = evaluate(lm, baseline=tmp_path / "base", **dict(kw, n_prompts=9))
    assert any("n_prompts" in w for w in more.warnings)
    assert more.changes["toxic_rate"].n_paired <= 6
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(GeomsafeError, match="not a geomsafe eval"):
        evaluate(lm, baseline=bad, **kw)


@pytest.mark.parametrize("prefix", ["", "base_model.model."])  # finetune's result: prefixed
def test_in_memory_peft_model_is_compared_with_its_base(empty_root, prefix):
    lm = tiny_model("llama")
    atlas = random_atlas(lm)
    model = peft.get_peft_model(lm.model, peft.LoraConfig(target_modules=["q_proj"], r=2))
    wrapped = type(lm)(model, lm.tokenizer, lm.spec, lm.source, prefix + lm.layer_template)
    res = evaluate(wrapped, atlas=atlas, data_root=empty_root, progress=False, **SMALL)
    assert res.before is not None and res.before.label == "base"
    assert "projection:toxicity" in res.changes
    for c in res.changes.values():  # LoRA B is zero: the adapted model is the base model
        assert c.delta.value == 0.0


def test_config_validation():
    with pytest.raises(GeomsafeError, match="unknown evaluate option"):
        evaluate(tiny_model("llama"), n_promps=3)
    bad_options = (dict(n_prompts=-1), dict(logodds_pairs=-1), dict(top_p=0.0), dict(n_boot=0))
    for bad in (*bad_options, dict(threshold=2.0)):
        with pytest.raises(GeomsafeError):
            EvalConfig().with_options(**bad).validate()


def test_likelihood_rows_alone_need_no_sampling(tmp_path, empty_root):
    lm = tiny_model("llama")
    kw = dict(SMALL, n_prompts=0, n_xstest=0, n_probe=0, em_probes=False, data_root=empty_root)
    out = tmp_path / "out"
    res = evaluate(lm, atlas=random_atlas(lm), out=out, progress=False, **kw)
    concept_rows = {f"logodds:{c}" for c in CONCEPT_SETS}  # built in: no data root needed
    assert set(res.model.metrics) == {"logodds:advice"} | concept_rows
    assert not res.model.generations
    assert "generate" not in res.model.seconds and "logodds:advice" in res.model.seconds
    assert "skipped projection: needs sampled responses (n_prompts=0)" in res.warnings
    assert (out / "generations.jsonl").read_text() == ""
    assert json.loads((out / "eval.json").read_text())["config"]["n_prompts"] == 0


# ------------------------------------------------------------------ CLI


@pytest.mark.parametrize(
    "args",
    [
        ["--n-prompts", "-1"],
        ["--n-prompts", "many"],
        ["--logodds", "nosuchset"],
        ["--logodds-pairs", "-2"],
        ["--samples-per-prompt", "0"],
        ["--adapter", "/no/such/adapter"],
        ["--baseline", "/no/such/eval.json"],
        ["--atlas", "/no/such/atlas"],
        ["--prompts", "nosuchset"],
        ["--data-root", "/no/such/data"],
        ["--threads", "0"],
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args):
    result = CliRunner().invoke(main, ["evaluate", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geomsafe: error:")


def test_cli_runs_on_a_model_folder_with_an_adapter(tmp_path, empty_root):
    lm = tiny_model("llama")
    folder = tmp_path / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    adapter = make_adapter(tmp_path / "adapter")
    args = ["evaluate", "--model", str(folder), "--adapter", str(adapter)]
    args += ["--out", str(tmp_path / "ev"), "--data-root", str(empty_root), "--no-progress"]
    args += ["--n-prompts", "4", "--max-new-tokens", "4", "--n-boot", "100"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "before [95% CI]" in out and "toxic-output rate" in out and " pp [" in out
    assert "note: skipped xstest" in out
    data = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert data["before"]["label"] == "base" and "toxic_rate" in data["changes"]
    assert data["changes"]["logodds:advice"]["n_paired"] == 50  # the default pairs per set
    args = ["evaluate", "--model", str(folder), "--adapter", str(adapter), "--likelihood-only"]
    args += ["--logodds", "advice,toxigen_control", "--logodds-pairs", "5", "--n-probe", "0"]
    args += ["--no-em-probes", "--data-root", str(empty_root), "--no-progress", "--n-boot", "50"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "log-odds advice [dangerous_advice]" in result.stdout
    assert "log-odds toxigen_control (style control)" in result.stdout
    assert "toxic-output rate" not in result.stdout and "note: " not in result.stdout
