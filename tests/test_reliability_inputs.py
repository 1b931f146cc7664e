"""One test per bad-input case of issue 17 items 5 and 9 that used to end in a traceback or an
unclear message (reliability report cases A05, A06b, E05, E06b, E07, E09d, U05, F09, the
adapter FutureWarning), on tiny models through the command line in this process."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import peft
import pytest
from click.testing import CliRunner

from geomsafe.adapters import attach_adapter
from geomsafe.cli import main
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.generate import SamplingConfig, generate
from geomsafe.evaluate.pairsets import load_pair_set
from geomsafe.firewall.requests import load_requests
from geomsafe.formatting import Example, encode
from geomsafe.testing import save_tiny, tiny_model
from reliability_helpers import one_error_line

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # an image renamed .jsonl
PAIR = {"prompt": "Say it.", "positive": "Yes, sure.", "negative": "No."}
EVAL_SMALL = ["--n-prompts", "2", "--samples-per-prompt", "1", "--max-new-tokens", "4"]
EVAL_SMALL += ["--n-probe", "0", "--no-em-probes", "--n-xstest", "0", "--n-boot", "10"]
EVAL_SMALL += ["--no-progress", "--logodds", "none"]
RAISING_TEMPLATE = "{{ raise_exception('this template refuses every conversation') }}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("model"))


def _latin1_concept(path: Path) -> Path:
    rows = [json.dumps(PAIR)] * 2 + ['{"prompt": "caf\xe9", "positive": "a", "negative": "b"}']
    path.write_bytes("\n".join(rows).encode("latin-1") + b"\n")
    return path


# --- non-UTF-8 and binary files: one line naming the file and line (A05, A06b, E05, E06b) ------


LATIN1_PROMPTS = b'{"prompt": "hello"}\n{"prompt": "caf\xe9"}\n'
AUDIT = ["audit", "--max-pairs", "8", "--n-perm", "10", "--n-boot", "10", "--concepts"]


@pytest.mark.parametrize(
    "case, command, data, line",
    [
        ("A05", AUDIT, "latin-1", 3),
        ("A06b", AUDIT, PNG, 1),
        ("E05", ["evaluate", *EVAL_SMALL, "--prompts"], LATIN1_PROMPTS, 2),
        ("E06b", ["evaluate", *EVAL_SMALL, "--prompts"], PNG, 1),
    ],
)
def test_concept_and_prompt_files_not_utf8_name_file_and_line(
    case: str, command: list[str], data: str | bytes, line: int, model_dir: Path, tmp_path: Path
):
    bad = tmp_path / f"{case}.jsonl"
    if data == "latin-1":
        _latin1_concept(bad)
    else:
        bad.write_bytes(data)  # type: ignore[arg-type]
    spec = f"toxicity,{bad}" if command is AUDIT else str(bad)
    args = [*command, spec, "--model", str(model_dir), "--out", str(tmp_path / case)]
    one_error_line(CliRunner().invoke(main, args), f"{bad}:{line}: not UTF-8 text")
    assert not (tmp_path / case).exists()


def test_pair_set_file_not_utf8_names_file_and_line(tmp_path: Path):
    bad = _latin1_concept(tmp_path / "pairs.jsonl")
    with pytest.raises(GeomsafeError, match=rf"^{bad}:3: not UTF-8 text"):
        load_pair_set(str(bad))


def test_firewall_request_file_not_utf8_names_file_and_line(tmp_path: Path):
    bad = tmp_path / "requests.json"
    bad.write_bytes(b'{"name": "x",\n "pairs": [["caf\xe9", "tea"]]}\n')
    with pytest.raises(GeomsafeError, match=rf"^{bad}:2: not UTF-8 text"):
        load_requests(bad)


def test_finetune_data_not_utf8_names_the_line(model_dir: Path, tmp_path: Path):
    bad = tmp_path / "nonutf8.jsonl"
    good = json.dumps({"prompt": "a", "completion": "b"})
    bad.write_bytes(((good + "\n") * 3).encode() + b'{"prompt": "caf\xe9", "completion": "c"}\n')
    args = ["finetune", "--model", str(model_dir), "--data", str(bad)]
    result = CliRunner().invoke(main, args + ["--out", str(tmp_path / "f09"), "--max-steps", "1"])
    one_error_line(result, f"{bad}:4: not UTF-8 text")
    assert not (tmp_path / "f09").exists()


# --- over-long evaluate prompts (E07): cut to the model's context before any allocation -------


def test_overlong_prompt_is_cut_to_the_context_with_one_warning():
    lm = tiny_model("llama")  # max_position_embeddings 512
    context = lm.model.config.max_position_embeddings
    huge = "word " * 200_000  # a million tokens: the attention mask alone would need terabytes
    cfg = SamplingConfig(samples_per_prompt=1, max_new_tokens=8, temperature=0.0)
    with pytest.warns(UserWarning, match=r"geomsafe: prompt 2 is \d+ tokens; kept its last 504"):
        out = generate(lm, ["hi", huge], cfg, progress=False)
    assert len(out.texts) == 2 and all(1 <= n <= 8 for row in out.n_tokens for n in row)
    kept = encode(lm.tokenizer, Example(huge), max_length=context - 8).input_ids
    header = encode(lm.tokenizer, Example("x")).input_ids[-3:]  # the assistant turn's opening
    assert len(kept) == context - 8 and kept[-3:] == header


def test_prompt_that_fits_is_not_cut():
    lm = tiny_model("llama")
    cfg = SamplingConfig(samples_per_prompt=1, max_new_tokens=4, temperature=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(lm, ["word " * 80], cfg, progress=False)


def test_max_new_tokens_over_the_context_is_one_line():
    lm = tiny_model("llama")
    cfg = SamplingConfig(samples_per_prompt=1, max_new_tokens=600, temperature=0.0)
    with pytest.raises(GeomsafeError, match=r"max new tokens 600 leaves no room .* context 512"):
        generate(lm, ["hi"], cfg, progress=False)


# --- chat templates that raise (U05 and its evaluate/firewall twins): one line ----------------


def test_chat_template_error_is_a_geomsafe_error():
    lm = tiny_model("llama")
    lm.tokenizer.chat_template = RAISING_TEMPLATE
    with pytest.raises(GeomsafeError, match="chat template failed: this template refuses"):
        encode(lm.tokenizer, Example("hello"))


def test_evaluate_with_a_raising_chat_template_is_one_line(tmp_path: Path):
    lm = tiny_model("llama")
    lm.tokenizer.chat_template = RAISING_TEMPLATE
    folder = tmp_path / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    args = ["evaluate", "--model", str(folder), "--out", str(tmp_path / "ev")]
    result = CliRunner().invoke(main, args + EVAL_SMALL)
    one_error_line(result, "chat template failed", "this template refuses")
    assert not (tmp_path / "ev").exists()


# --- adapters (E09d, the FutureWarning on every load) -----------------------------------------


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("adapter")
    lm = tiny_model("llama")
    config = peft.LoraConfig(target_modules=["q_proj"], r=2, task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.get_peft_model(lm.model, config).save_pretrained(folder)
    return folder


def test_adapter_folder_without_weights_says_so(adapter_dir: Path, tmp_path: Path):
    folder = tmp_path / "adapter_noweights"
    folder.mkdir()
    shutil.copy(adapter_dir / "adapter_config.json", folder)
    lm = tiny_model("llama")
    no_weights = r"has adapter_config.json but no adapter weights"
    with pytest.raises(GeomsafeError, match=no_weights), attach_adapter(lm, folder):
        pass


def test_adapter_load_prints_no_future_warning(adapter_dir: Path):
    lm = tiny_model("llama")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with attach_adapter(lm, adapter_dir):
            pass
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], caught
