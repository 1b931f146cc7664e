"""Generate under a firewall and keep, per response, its scores and its verdict.

:func:`screen` samples responses with :func:`geomsafe.evaluate.generate.generate` (the
project's prompt encoding, batching and seeding) inside :meth:`Firewall.apply`, then matches
every recorded row to its prompt by its token ids. Per response it keeps

- ``prompt_stat``: each check's score at the last prompt token (:meth:`Firewall.statistic`,
  span ``prompt``) and ``prompt_score``, the largest margin there;
- ``response_stat``: each ``response`` check's largest score over the generated tokens fed back
  (span ``response``) and ``response_score``, the largest margin there;
- ``token_scores``: every check's score at each generated token fed back (before any clamp);
- ``verdict``: the first check that fired (in ``block`` mode the reason for the refusal, in the
  other modes a flag), and ``n_clamped``, the (token, check) pairs the clamp capped.

A blocked response is replaced by the firewall's refusal; the text the model had produced
until it was stopped is kept as ``raw``. :func:`run` does this for a prompt set (with an
optional peft adapter) and writes ``generations.jsonl`` and ``firewall_run.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from geomsafe.adapters import adapter_sha256
from geomsafe.artefacts import (
    FIREWALL_RUN_JSON,
    GENERATIONS_JSONL,
    geomsafe_version,
    prepare_out,
    write_json,
    write_jsonl,
)
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.generate import SamplingConfig, generate
from geomsafe.evaluate.prompts import EvalPrompt, load_prompt_set, prompts_hash, select
from geomsafe.firewall.adapter import adapter_provenance, check_adapter, maybe_adapter
from geomsafe.firewall.config import Firewall
from geomsafe.firewall.hooks import Session, Verdict, install
from geomsafe.formatting import Example, encode
from geomsafe.models import LoadedModel, eos_ids, load

N_EXAMPLES = 20  # flagged examples kept in firewall_run.json


@dataclass
class Screened:
    """One response generated under the firewall (see the module docstring)."""

    id: str
    sample: int
    prompt: str
    response: str
    raw: str
    blocked: bool
    verdict: Verdict | None
    prompt_stat: Tensor
    response_stat: Tensor
    prompt_score: float
    response_score: float
    token_scores: Tensor
    n_tokens: int
    n_clamped: int
    finish: str  # "stop", "length" or "blocked"

    def to_dict(self, keys: list[str], tokens: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "sample": self.sample,
            "prompt": self.prompt,
            "response": self.response,
            "blocked": self.blocked,
            "finish": self.finish,
            "verdict": None if self.verdict is None else self.verdict.to_dict(),
            "prompt_score": _round(self.prompt_score),
            "response_score": _round(self.response_score),
            "prompt_scores": dict(zip(keys, _rounds(self.prompt_stat), strict=True)),
            "response_max": dict(zip(keys, _rounds(self.response_stat), strict=True)),
            "n_tokens": self.n_tokens,
            "n_clamped": self.n_clamped,
        }
        if self.raw != self.response:
            out["raw"] = self.raw
        if tokens:
            out["token_scores"] = {k: _rounds(self.token_scores[:, j]) for j, k in enumerate(keys)}
        return out


def _round(x: float) -> float | None:
    return None if x != x or abs(x) == float("inf") else round(float(x), 4)


def _rounds(t: Tensor) -> list[float | None]:
    return [_round(float(v)) for v in t]


def _text(example: Example) -> str:
    if isinstance(example.prompt, str):
        return example.prompt
    return json.dumps(list(example.prompt), ensure_ascii=False)


def screen(
    lm: LoadedModel,
    firewall: Firewall,
    prompts: Sequence[EvalPrompt | Example | str],
    mode: str = "monitor",
    sampling: SamplingConfig | None = None,
    *,
    refusal: str | None = None,
    progress: bool = True,
    on_step=None,
) -> list[Screened]:
    """Generate ``sampling.samples_per_prompt`` responses per prompt under ``firewall`` in
    ``mode``; one :class:`Screened` per response, prompt-major. Default sampling: greedy,
    one sample, 64 new tokens."""
    cfg = sampling or SamplingConfig(samples_per_prompt=1, temperature=0.0, max_new_tokens=64)
    ids = [p.id if isinstance(p, EvalPrompt) else str(i) for i, p in enumerate(prompts)]
    examples = [
        p.example() if isinstance(p, EvalPrompt) else p if isinstance(p, Example) else Example(p)
        for p in prompts
    ]
    stop = eos_ids(lm.model, lm.tokenizer)
    with install(
        lm.model, firewall, mode, layer_template=lm.layer_template, eos_token_id=stop,
        on_step=on_step,
    ) as session:
        gens = generate(lm, examples, cfg, progress=progress, desc=f"firewall {mode}")
    rows = _match(lm, examples, cfg.samples_per_prompt, session)
    text = refusal if refusal is not None else firewall.refusal
    out = []
    for i, ex in enumerate(examples):
        for s in range(cfg.samples_per_prompt):
            row = rows[(i, s)]
            n = gens.n_tokens[i][s]
            p = row.n_prompt
            blocked = mode == "block" and row.verdict is not None
            prompt_stat = firewall.statistic(row.scores, p, "prompt")
            # the generated tokens fed back: all but the last one
            scores = row.scores[: p + max(n - 1, 0)]
            response_stat = firewall.statistic(scores, p, "response")
            raw = gens.texts[i][s]
            finish = "blocked" if blocked else "length" if n >= cfg.max_new_tokens else "stop"
            out.append(
                Screened(
                    ids[i],
                    s,
                    _text(ex),
                    text if blocked else raw,
                    raw,
                    blocked,
                    row.verdict,
                    prompt_stat,
                    response_stat,
                    firewall.score(prompt_stat),
                    firewall.score(response_stat),
                    row.scores[p : p + max(n - 1, 0)].clone(),
                    n,
                    row.n_clamped,
                    finish,
                )
            )
    return out


def _match(lm: LoadedModel, examples: list[Example], samples: int, session: Session):
    """``{(prompt index, sample): RowTrace}``: rows are matched to prompts by their token ids;
    rows of one prompt come in sample order (generate sorts by prompt, then sample)."""
    queues: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for i, ex in enumerate(examples):
        key = tuple(encode(lm.tokenizer, Example(ex.prompt)).input_ids)
        queues.setdefault(key, []).extend((i, s) for s in range(samples))
    out = {}
    for trace in session.traces:
        for row in trace.rows():
            queue = queues.get(tuple(row.prompt_ids))
            if not queue:
                raise GeomsafeError("internal error: a generated row matches no prompt")
            out[queue.pop(0)] = row
    if len(out) != len(examples) * samples:
        raise GeomsafeError("internal error: not every response was recorded by the firewall")
    return out


@dataclass
class RunResult:
    """Responses generated under a firewall, with the run's summary and provenance."""

    mode: str
    firewall: Firewall
    screened: list[Screened]
    config: dict[str, Any]
    provenance: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)
    out: str | None = None

    @property
    def n_blocked(self) -> int:
        return sum(s.blocked for s in self.screened)

    @property
    def n_flagged(self) -> int:
        return sum(s.verdict is not None for s in self.screened)

    def summary(self) -> dict[str, Any]:
        keys = self.firewall.keys
        flagged = [s for s in self.screened if s.verdict is not None]
        flagged.sort(key=lambda s: -max(s.prompt_score, s.response_score))
        stages = [s.verdict.stage for s in flagged if s.verdict is not None]
        return {
            "mode": self.mode,
            "n_responses": len(self.screened),
            "n_blocked": self.n_blocked,
            "n_flagged": self.n_flagged,
            "n_flagged_prompt": stages.count("prompt"),
            "n_flagged_response": stages.count("response"),
            "n_clamped_responses": sum(s.n_clamped > 0 for s in self.screened),
            "n_clamped": sum(s.n_clamped for s in self.screened),
            "checks": [c.meta() for c in self.firewall.checks],
            "fpr": self.firewall.fpr,
            "scores": {
                "prompt": {
                    k: _rounds(torch.stack([s.prompt_stat[j] for s in self.screened]))
                    for j, k in enumerate(keys)
                },
                "response": {
                    k: _rounds(torch.stack([s.response_stat[j] for s in self.screened]))
                    for j, k in enumerate(keys)
                },
                "prompt_score": [_round(s.prompt_score) for s in self.screened],
                "response_score": [_round(s.response_score) for s in self.screened],
            },
            "benign": self.firewall.calibration.get("stats", {}),
            "flagged_examples": [s.to_dict(keys, tokens=False) for s in flagged[:N_EXAMPLES]],
            "config": self.config,
            "provenance": self.provenance,
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }

    def write(self, folder: str | Path) -> Path:
        """``generations.jsonl`` then ``firewall_run.json``, each written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        keys = self.firewall.keys
        write_jsonl(folder / GENERATIONS_JSONL, (s.to_dict(keys) for s in self.screened))
        write_json(folder / FIREWALL_RUN_JSON, self.summary(), "firewall_run")
        self.out = str(folder)
        return folder


def run(
    model: str | LoadedModel,
    firewall: str | Path | Firewall,
    prompts: str | Sequence[EvalPrompt] = "builtin",
    mode: str = "monitor",
    out: str | Path | None = None,
    *,
    adapter: str | Path | None = None,
    sampling: SamplingConfig | None = None,
    n_prompts: int | None = None,
    refusal: str | None = None,
    data_root: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> RunResult:
    """Generate responses to ``prompts`` (a prompt-set spec such as ``builtin``, ``xstest`` or
    a ``.jsonl`` file, see :func:`geomsafe.evaluate.prompts.load_prompt_set`; or prompts) with
    ``model`` (and ``adapter``) under ``firewall`` in ``mode``; writes to ``out`` when given."""
    t0 = time.perf_counter()
    fw = firewall if isinstance(firewall, Firewall) else Firewall.load(firewall)
    cfg = sampling or SamplingConfig(samples_per_prompt=1, temperature=0.0, max_new_tokens=64)
    cfg.validate()
    check_adapter(adapter)
    folder = prepare_out(out, "firewall_run", overwrite=overwrite) if out is not None else None
    if isinstance(prompts, str):
        items = select(load_prompt_set(prompts, data_root), n_prompts, cfg.seed)
        spec = prompts
    else:
        items, spec = list(prompts), "given"
    lm = model if isinstance(model, LoadedModel) else load(model)
    fw.check_width(lm.d_model)
    notes = []
    calibrated_on = fw.provenance.get("model_source")
    if calibrated_on is not None and calibrated_on != lm.source:
        notes.append(f"the firewall was calibrated on {calibrated_on}, not on {lm.source}")
    if adapter is not None and fw.provenance.get("adapter_sha256") != adapter_sha256(adapter):
        notes.append("the thresholds were not calibrated on this adapter's benign traffic")
    with maybe_adapter(lm, adapter):
        screened = screen(lm, fw, items, mode, cfg, refusal=refusal, progress=progress)
    provenance = {
        **lm.provenance(),
        "geomsafe_version": geomsafe_version(),
        **adapter_provenance(adapter),
        "firewall": str(Path(firewall).resolve()) if isinstance(firewall, str | Path) else None,
        "firewall_provenance": fw.provenance,
        "prompts": spec,
        "prompts_sha256": prompts_hash(items),
    }
    config = {
        "mode": mode,
        "refusal": refusal if refusal is not None else fw.refusal,
        "sampling": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "n_prompts": len(items),
    }
    result = RunResult(mode, fw, screened, config, provenance, time.perf_counter() - t0, notes)
    if folder is not None:
        with folder.writing() as work:
            result.write(work)
        result.out = str(folder.out)
    return result
