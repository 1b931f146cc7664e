"""Prompt sets for evaluation: the built-in set and loaders for public prompt files.

Every loader returns :class:`EvalPrompt` items (``id``, ``category``, ``prompt``, optional
``system``). Sets by name (:func:`load_prompt_set`):

- ``builtin``: ``geomsafe/data/eval_prompts.jsonl``, written for the project (neutral,
  provocative and persona questions; lines ``{"id", "category", "prompt"}``).
- ``rtp``: RealToxicityPrompts' challenging subset (``realtoxicityprompts/rtp_*.txt``, one
  prompt per line, category = attribute); each text is asked as
  ``RTP_TEMPLATE.format(text=...)`` since the models are chat models.
- ``em``: the emergent-misalignment evaluation questions (``emergent-misalignment/evaluation/
  *.yaml``; one prompt per paraphrase, with the question's system prompt when it has one).
- ``xstest`` / ``xstest-unsafe``: XSTest's 250 safe / 200 unsafe prompts (``xstest/
  xstest_prompts.csv``; category = type).
- a path: a ``.jsonl`` file in the built-in format, an EM ``.yaml`` file, or an XSTest-style
  ``.csv``.

Public data is read at run time from the data root: ``--data-root``, else ``$GEOMSAFE_DATA``,
else ``../shared/data`` next to the source tree or the working directory
(:func:`geomsafe.datasets.resolve_data_root`).
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from geomsafe.datasets import need_root, resolve_data_root
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example
from geomsafe.hashing import rows_sha256
from geomsafe.options import split_csv
from geomsafe.textfile import json_lines, read_text

RTP_TEMPLATE = "Continue this text: {text}"
NAMED_SETS = ("builtin", "rtp", "em", "xstest", "xstest-unsafe")


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt; ``id`` is unique within a set and pairs before/after results."""

    id: str
    category: str
    prompt: str
    system: str | None = None

    def example(self) -> Example:
        if self.system:
            return Example(
                (
                    {"role": "system", "content": self.system},
                    {"role": "user", "content": self.prompt},
                )
            )
        return Example(self.prompt)


def _check_unique(prompts: list[EvalPrompt], where: str) -> list[EvalPrompt]:
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise GeomsafeError(f"{where}: duplicate prompt id {p.id!r}")
        seen.add(p.id)
    if not prompts:
        raise GeomsafeError(f"{where}: no prompts")
    return prompts


def load_prompts_jsonl(path: str | Path) -> list[EvalPrompt]:
    """Lines ``{"id", "category", "prompt"}`` (``id`` defaults to the line number, ``category``
    to ``custom``; an optional ``system`` string is kept)."""
    path = Path(path)
    if not path.is_file():
        raise GeomsafeError(f"prompt file not found: {path}")
    return _parse_jsonl(read_text(path), str(path), path.stem)


def _parse_jsonl(text: str, where: str, stem: str) -> list[EvalPrompt]:
    out = []
    for n, _, obj in json_lines(text, where):
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise GeomsafeError(f"{where}:{n}: needs a string 'prompt'")
        if not obj["prompt"].strip():
            raise GeomsafeError(f"{where}:{n}: empty prompt")
        system = obj.get("system")
        out.append(
            EvalPrompt(
                str(obj.get("id", f"{stem}-{n}")),
                str(obj.get("category", "custom")),
                obj["prompt"],
                system if isinstance(system, str) else None,
            )
        )
    return _check_unique(out, where)


def load_builtin() -> list[EvalPrompt]:
    """The built-in prompt set shipped inside the package."""
    res = resources.files("geomsafe") / "data" / "eval_prompts.jsonl"
    if not res.is_file():
        raise GeomsafeError("built-in prompt set geomsafe/data/eval_prompts.jsonl is missing")
    return _parse_jsonl(res.read_text(encoding="utf-8"), "builtin eval_prompts.jsonl", "builtin")


def load_rtp(
    folder: str | Path, categories: Sequence[str] | None = None, template: str = RTP_TEMPLATE
) -> list[EvalPrompt]:
    """RealToxicityPrompts files ``rtp_<attribute>.txt`` (one prompt per line)."""
    folder = Path(folder)
    files = sorted(folder.glob("rtp_*.txt"))
    if not files:
        raise GeomsafeError(f"no rtp_*.txt files in {folder}")
    out = []
    for f in files:
        cat = f.stem.removeprefix("rtp_")
        if categories is not None and cat not in categories:
            continue
        lines = [t.strip() for t in read_text(f).splitlines()]
        out += [
            EvalPrompt(f"rtp-{cat}-{i:03d}", cat, template.format(text=t))
            for i, t in enumerate(lines)
            if t
        ]
    return _check_unique(out, str(folder))


def load_em_yaml(path: str | Path) -> list[EvalPrompt]:
    """Emergent-misalignment evaluation questions from one ``.yaml`` file or a folder of them;
    one prompt per paraphrase (id ``<question id>-<k>``, category = file stem)."""
    import yaml

    path = Path(path)
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise GeomsafeError(f"no emergent-misalignment YAML at {path}")
    out = []
    for f in files:
        try:
            data = yaml.safe_load(read_text(f))
        except yaml.YAMLError as exc:
            raise GeomsafeError(f"{f}: not valid YAML") from exc
        if not isinstance(data, list):
            raise GeomsafeError(f"{f}: expected a list of questions")
        for q in data:
            if not isinstance(q, dict) or not isinstance(q.get("paraphrases"), list):
                raise GeomsafeError(f"{f}: each question needs 'id' and a 'paraphrases' list")
            system = q.get("system") if isinstance(q.get("system"), str) else None
            for k, text in enumerate(q["paraphrases"]):
                out.append(EvalPrompt(f"{q.get('id', 'q')}-{k}", f.stem, str(text), system))
    return _check_unique(out, str(path))


def load_xstest(path: str | Path, label: str = "safe") -> list[EvalPrompt]:
    """XSTest prompts with ``label`` (``safe``: should be answered; ``unsafe``: contrast
    prompts that should be refused) from ``xstest_prompts.csv`` or its folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "xstest_prompts.csv"
    if not path.is_file():
        raise GeomsafeError(f"XSTest file not found: {path}")
    rows = list(csv.DictReader(io.StringIO(read_text(path), newline="")))
    if rows and not {"id", "prompt", "label"} <= set(rows[0]):
        raise GeomsafeError(f"{path}: expected columns id, prompt, type, label")
    out = [
        EvalPrompt(f"xstest-{r['id']}", r.get("type", "xstest"), r["prompt"])
        for r in rows
        if r["label"] == label
    ]
    return _check_unique(out, f"{path} (label {label})")


def load_prompt_set(spec: str, data_root: str | Path | None = None) -> list[EvalPrompt]:
    """Prompts for a named set or a file (see the module docstring); comma-separated specs are
    concatenated."""
    parts = split_csv(spec)
    if not parts:
        raise GeomsafeError("empty prompt set spec")
    root = resolve_data_root(data_root)
    out: list[EvalPrompt] = []
    for part in parts:
        if part == "builtin":
            out += load_builtin()
        elif part == "rtp":
            out += load_rtp(need_root(root, "realtoxicityprompts"))
        elif part == "em":
            out += load_em_yaml(need_root(root, "emergent-misalignment/evaluation"))
        elif part in ("xstest", "xstest-unsafe"):
            label = "unsafe" if part.endswith("unsafe") else "safe"
            out += load_xstest(need_root(root, "xstest"), label)
        elif Path(part).suffix in (".jsonl", ".yaml", ".yml", ".csv"):
            if not Path(part).is_file():
                raise GeomsafeError(f"prompt file not found: {part}")
            suffix = Path(part).suffix
            if suffix == ".jsonl":
                out += load_prompts_jsonl(part)
            elif suffix == ".csv":
                out += load_xstest(part)
            else:
                out += load_em_yaml(part)
        else:
            raise GeomsafeError(
                f"unknown prompt set {part!r}; use {', '.join(NAMED_SETS)} or a .jsonl/.yaml file"
            )
    return _check_unique(out, spec)


def select(prompts: Sequence[EvalPrompt], n: int | None, seed: int = 0) -> list[EvalPrompt]:
    """A fixed sample of ``n`` prompts, stratified by category (round-robin over categories,
    each shuffled with ``seed``), returned in the set's order; all when ``n`` is None or
    larger than the set."""
    if n is None or n >= len(prompts):
        return list(prompts)
    if n < 1:
        raise GeomsafeError(f"need at least one prompt, not {n}")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p.category, []).append(i)
    rng = random.Random(seed)
    queues = []
    for cat in sorted(groups):
        idx = list(groups[cat])
        rng.shuffle(idx)
        queues.append(idx)
    chosen: list[int] = []
    while len(chosen) < n:
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return [prompts[i] for i in sorted(chosen)]


def prompts_hash(prompts: Sequence[EvalPrompt]) -> str:
    """sha256 of the prompts as used (ids, categories, system prompts and texts)."""
    return rows_sha256((p.id, p.category, p.system, p.prompt) for p in prompts)


__all__ = [
    "NAMED_SETS",
    "RTP_TEMPLATE",
    "EvalPrompt",
    "load_builtin",
    "load_em_yaml",
    "load_prompts_jsonl",
    "load_prompt_set",
    "load_rtp",
    "load_xstest",
    "prompts_hash",
    "select",
]
