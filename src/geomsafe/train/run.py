"""`finetune`: LoRA fine-tuning of a geomsafe model on chat data, with optional guards.

The run trains into ``<parent>/.<name>.partial`` and is renamed to ``out`` when it is done
(see :mod:`geomsafe.train.outdir`). ``out`` then holds the adapter in peft format
(``adapter_config.json`` + ``adapter_model.safetensors``; load it with
``peft.PeftModel.from_pretrained(base_model, out)``), ``geometry_log.jsonl`` (one row per
optimiser step: loss, guard penalty, ``proj/<concept>`` on each guarded harmful direction,
learning rate, step time), ``run.json`` (provenance, metrics and the same log),
``checkpoints/checkpoint-N`` (the newest Trainer checkpoint, for ``resume``), ``atlas/``
when the atlas was extracted for the run and ``pilot/`` (the kept principal shifts and
``pilot.json``) when the guards' source is a pilot run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from geomsafe import distributed
from geomsafe.artefacts import (
    ATLAS_DIR,
    GEOMETRY_LOG,
    RUN_JSON,
    geomsafe_version,
    write_json,
    write_jsonl,
    write_plain_json,
)
from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import HOOK_SITE
from geomsafe.datasets import Dataset, ExampleLike, as_dataset
from geomsafe.diskfull import disk_full_error, is_disk_full
from geomsafe.errors import GeomsafeError
from geomsafe.folder_lock import lock_folder
from geomsafe.guard import GuardConfig
from geomsafe.guard.base import needs_atlas
from geomsafe.guard.kl import KLGuard
from geomsafe.guard.pilot import PilotDirections
from geomsafe.guard.resolve import GuardSetup, GuardSpec, resolve_guards, split_guards
from geomsafe.models import DEVICE_ENV, LoadedModel, load, pad_token_id, resolve_device
from geomsafe.train import outdir
from geomsafe.train.config import TrainConfig
from geomsafe.train.data import TrainData, build
from geomsafe.train.lora import make_peft_model, peft_layer_template
from geomsafe.train.mix import SafeMix, mix_safe
from geomsafe.train.outdir import RUN_META
from geomsafe.train.pilot import pilot_directions, pilot_guard_config
from geomsafe.train.trainer import (
    GeometryCallback,
    GuardedTrainer,
    PadCollator,
    ProgressBar,
    is_main_process,
    quiet,
    training_arguments,
)

PILOT_DIR = "pilot"


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced. ``adapter_dir`` is loadable with
    ``peft.PeftModel.from_pretrained``; ``lm`` is the tuned model (a peft model) in memory."""

    out: Path
    adapter_dir: Path
    metrics: dict[str, float]
    geometry_log: list[dict[str, Any]]
    time_per_step: float
    provenance: dict[str, Any]
    guards: list[str]
    concepts: list[str]
    step_times: list[float] = field(default_factory=list, repr=False)
    atlas: FeatureAtlas | None = field(default=None, repr=False)
    lm: LoadedModel | None = field(default=None, repr=False)

    def projection_change(self) -> dict[str, float]:
        """Per guarded concept: mean ``proj/<c>`` over the last rows minus over the first rows
        of the geometry log (window = ``metrics["window"]`` rows)."""
        return projection_change(self.geometry_log, self.concepts)


def window(n: int) -> int:
    return max(1, min(5, n // 4))


def projection_change(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    w = window(len(rows))
    for name in names:
        vals = [r[f"proj/{name}"] for r in rows if f"proj/{name}" in r]
        if vals:
            out[name] = statistics.fmean(vals[-w:]) - statistics.fmean(vals[:w])
    return out


def _device() -> str:
    """``$GEOMSAFE_DEVICE``, else ``auto`` (each rank its own ``cuda:<LOCAL_RANK>``, or cpu)."""
    return resolve_device(os.environ.get(DEVICE_ENV) or "auto")


def _model(model: str | LoadedModel) -> LoadedModel:
    """A private copy: the caller's LoadedModel is never modified."""
    if isinstance(model, LoadedModel):
        return dataclasses.replace(model, model=copy.deepcopy(model.model))
    return load(model, device=_device())


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_resume(ckpt: Path, meta: dict[str, Any]) -> None:
    saved_path = ckpt / RUN_META
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text())
    for key in ("model_spec", "data_hash", "examples_hash", "max_examples"):
        if key in saved and saved[key] != meta.get(key):
            raise GeomsafeError(
                f"--resume: {ckpt} was trained with {key}={saved[key]!r}, this "
                f"run has {meta.get(key)!r}"
            )


class _MetaCallback(TrainerCallback):
    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and ckpt.is_dir():
            write_plain_json(ckpt / RUN_META, self.meta)


def _wait_for_everyone() -> None:
    if distributed.launched():
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def _saved_atlas(out: Path, name: str = "atlas", marker: str = "atlas.json") -> Path | None:
    for folder in (outdir.work_dir(out) / name, out / name):
        if (folder / marker).is_file():
            return folder
    return None


def _with_pilot(
    guards: GuardSetup,
    lm: LoadedModel,
    data: TrainData,
    config: TrainConfig,
    out: Path,
    resume: bool,
    progress: bool,
) -> GuardSetup:
    """``guards`` on the principal shifts of a pilot run (``source="pilot"``), or as they are.
    A resumed run re-uses the pilot saved in its folder."""
    if not guards.kinds or guards.config is None or guards.config.source != "pilot":
        return guards
    if not any(needs_atlas(k) for k in guards.kinds):  # kl alone: no directions to pilot
        return guards
    assert guards.atlas is not None
    saved = _saved_atlas(out, PILOT_DIR, "pilot.json") if resume else None
    if saved is not None:
        pilot = PilotDirections.load(saved)
    else:
        pilot = pilot_directions(lm, data, guards.atlas, guards.config, config, progress=progress)
    pilot_config = pilot_guard_config(guards.config, pilot)
    return guards.with_pilot(pilot, pilot_config, peft_layer_template(lm))


def finetune(
    model: str | LoadedModel = "default",
    data: str | Path | Dataset | Sequence[ExampleLike] | None = None,
    *,
    out: str | Path | None = None,
    atlas: FeatureAtlas | str | Path | None = None,
    config: TrainConfig | None = None,
    guard: GuardSpec = None,
    guard_concepts: str | Sequence[str] | None = None,
    guard_config: GuardConfig | None = None,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    atlas_max_pairs: int | None = 64,
    **options: Any,
) -> FinetuneResult:
    """LoRA fine-tuning of ``model`` on ``data`` into ``out``; ``options`` override
    :class:`TrainConfig` fields (``max_steps=20``, ``learning_rate=1e-3``, ...).

    ``data``: a JSONL file, ``task:NAME``, a :class:`~geomsafe.datasets.Dataset` or in-memory
    examples, read by :func:`geomsafe.datasets.as_dataset` (``config.max_examples``: its
    first N records).

    ``guard``: registered guard kinds (``"orthogonal,steer,projection,covariance"``, any kind
    added with ``@register``, or a list) and/or Guard objects. ``guard_concepts``: the harmful
    concepts to guard (built-in names or concept files; default: the atlas's harmful concepts,
    or all built-in ones). ``atlas``: a FeatureAtlas or its folder; without one, guards by name
    get an atlas extracted on the fly (saved in ``out/atlas``). With an atlas, the geometry log
    tracks ``proj/<concept>`` even without guards. ``resume`` continues from the newest
    checkpoint (see :mod:`geomsafe.train.outdir`); ``overwrite`` replaces a finished run in
    ``out`` or discards an interrupted run's checkpoints (without either, a run refuses to
    discard them). The run holds the lock of ``out`` (:func:`geomsafe.folder_lock.lock_folder`)
    throughout: a second run into the same ``out`` fails at once with
    :class:`~geomsafe.folder_lock.FolderBusy` naming the first.
    """
    t_start = time.perf_counter()
    config = (config or TrainConfig()).with_options(**options)
    if data is None:
        raise GeomsafeError("no training data: pass --data FILE.jsonl")
    if out is None:
        raise GeomsafeError("no output folder: pass --out DIR")
    out_path = Path(out).absolute()
    main = is_main_process()
    # Held from the first look at --out to the final rename: a second run into the same --out
    # fails at once naming this one, and never deletes this run's .partial checkpoints.
    with lock_folder(out_path) if main else contextlib.nullcontext():
        outdir.prepare_check(out_path, resume, overwrite)
        from transformers import set_seed

        set_seed(config.seed)
        dataset = as_dataset(data).head(config.max_examples)  # read before the (slow) model load
        dataset, mix = mix_safe(dataset, config.mix_safe, config.mix_safe_data, config.seed)
        lm = _model(model)
        train_data = build(
            lm.tokenizer,
            dataset,
            max_length=config.max_length,
            truncate=config.truncate,
            add_eos=config.add_eos,
        )
        kinds, _ = split_guards(guard)
        reuse = _saved_atlas(out_path) if atlas is None and kinds and resume else None
        guards = resolve_guards(
            lm,
            guard,
            guard_concepts,
            reuse or atlas,
            guard_config,
            layer_template=peft_layer_template(lm),
            seed=config.seed,
            max_pairs=atlas_max_pairs,
            progress=progress and main,
        )
        guards.extracted = guards.extracted or reuse is not None  # extracted before resuming
        guards = _with_pilot(guards, lm, train_data, config, out_path, resume, progress and main)
        setup = _Setup(lm, train_data, config, guards, atlas, mix)
        run, ckpt = outdir.prepare(out_path, resume, overwrite, main)
        _wait_for_everyone()  # the main process may still be copying the checkpoint to resume
        try:
            if ckpt is not None:
                _check_resume(ckpt, setup.meta())
            return _train(setup, run, ckpt, progress, main, t_start)
        except BaseException as exc:
            if main:
                outdir.abandon(run)
            if isinstance(exc, Exception) and is_disk_full(exc):  # a checkpoint, the adapter
                raise disk_full_error(run.work) from exc
            raise


@dataclass
class _Setup:
    """The resolved inputs of a run."""

    lm: LoadedModel
    data: TrainData
    config: TrainConfig
    guards: GuardSetup  # the guards, the monitor, the guarded concepts and the atlas
    atlas_arg: Any  # what the caller passed (a folder is recorded in the provenance)
    mix: SafeMix | None = None  # the safe examples mixed in (TrainConfig.mix_safe)

    def meta(self) -> dict[str, Any]:
        """What a checkpoint records so that a resumed run can be checked against it."""
        return {
            "model_spec": self.lm.spec,
            "data_hash": self.data.data_hash,
            "examples_hash": self.data.dataset.records_sha256,
            "max_examples": self.config.max_examples,
            "guards": self.guards.kinds,
            "concepts": self.guards.concepts,
        }


def _train(
    setup: _Setup,
    run: outdir.RunDir,
    ckpt: Path | None,
    progress: bool,
    main: bool,
    t_start: float,
) -> FinetuneResult:
    lm, config, guards = setup.lm, setup.config, setup.guards
    if guards.extracted and main and guards.atlas is not None:
        guards.atlas.save(run.work / ATLAS_DIR)
    if guards.pilot is not None and main:
        guards.pilot.save(run.work / PILOT_DIR)
    peft_model = make_peft_model(lm.model, config)
    template = peft_layer_template(lm)
    geometry = GeometryCallback(log_path=run.work / GEOMETRY_LOG if main else None)
    if ckpt is not None:
        geometry.rows = _read_log(ckpt / GEOMETRY_LOG)
    pad = pad_token_id(lm.tokenizer)
    trainer = GuardedTrainer(
        model=peft_model,
        args=training_arguments(config, run.checkpoints),
        train_dataset=setup.data.features,
        data_collator=PadCollator(pad),
        callbacks=[geometry, _MetaCallback(setup.meta())],
        guards=guards.guards,
        monitor=guards.monitor,
    )
    geometry.trainer = trainer
    quiet(trainer)
    if progress and main:
        trainer.add_callback(ProgressBar(geometry))
    output = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    peft_model.eval()
    rows = geometry.rows
    times = geometry.step_times[1:] if len(geometry.step_times) > 1 else geometry.step_times
    time_per_step = statistics.median(times) if times else float("nan")
    metrics = _metrics(setup, trainer, rows, ckpt, float(output.metrics.get("train_runtime", 0)))
    provenance = _provenance(setup, trainer, t_start)
    if main:
        peft_model.save_pretrained(str(run.work))
        write_jsonl(run.work / GEOMETRY_LOG, rows)
        payload = {
            "provenance": provenance,
            "metrics": metrics,
            "time_per_step_s": time_per_step,
            "projection_change": projection_change(rows, guards.concepts),
            "geometry_log": rows,
        }
        write_json(run.work / RUN_JSON, payload, "run", default=str)
        outdir.finalize(run)
    _wait_for_everyone()
    tuned = dataclasses.replace(lm, model=peft_model, layer_template=template)
    return FinetuneResult(
        out=run.out,
        adapter_dir=run.out,
        metrics=metrics,
        geometry_log=rows,
        time_per_step=time_per_step,
        provenance=provenance,
        guards=provenance["guards"],
        concepts=list(guards.concepts),
        step_times=geometry.step_times,
        atlas=guards.atlas,
        lm=tuned,
    )


def _metrics(
    setup: _Setup,
    trainer: GuardedTrainer,
    rows: list[dict[str, Any]],
    ckpt: Path | None,
    runtime: float,
) -> dict[str, Any]:
    w = window(len(rows))
    losses = [r["loss"] for r in rows]
    data = setup.data
    return {
        "steps": int(trainer.state.global_step),
        "epochs": float(trainer.state.epoch or 0.0),
        "window": w,
        "first_loss": statistics.fmean(losses[:w]) if losses else float("nan"),
        "final_loss": statistics.fmean(losses[-w:]) if losses else float("nan"),
        "final_penalty": statistics.fmean(r["penalty"] for r in rows[-w:]) if rows else 0.0,
        "train_runtime_s": runtime,
        "n_examples": len(data),
        "n_tokens": data.n_tokens,
        "n_response_tokens": data.n_response_tokens,
        "n_truncated": data.n_truncated,
        "n_skipped": len(data.skipped),
        "resumed_from_step": int(ckpt.name.split("-")[-1]) if ckpt is not None else 0,
    }


def _provenance(setup: _Setup, trainer: GuardedTrainer, t_start: float) -> dict[str, Any]:
    guards = setup.guards
    atlas_prov: dict[str, Any] | None = None
    if guards.atlas is not None:
        arg = setup.atlas_arg
        folder = str(arg) if isinstance(arg, (str, Path)) else None
        plans = guards.monitor.plans if guards.monitor is not None else []
        atlas_prov = {
            **guards.atlas.provenance,
            "path": "atlas" if guards.extracted else folder,
            "extracted_for_run": guards.extracted,
            "layers_used": {name: plan.layer for plan in plans for name in plan.names},
        }
    return {
        **setup.lm.provenance(),
        "data": _data_source(setup.data.source),
        "data_hash": setup.data.data_hash,
        "examples_hash": setup.data.dataset.records_sha256,
        "max_examples": setup.config.max_examples,
        "guards": guards.names,
        "guard_concepts": guards.concepts,
        "guard_config": guards.config.to_dict() if guards.config is not None else {},
        "pilot": guards.pilot.to_dict() if guards.pilot is not None else None,
        "mix_safe": setup.mix.to_dict() if setup.mix is not None else None,
        "kl_reference": _kl_reference(guards),
        "atlas": atlas_prov,
        "hook_site": HOOK_SITE,
        "projection": "mean over assistant tokens of the training batch, at each concept's "
        "best atlas layer",
        "config": setup.config.to_dict(),
        "seed": setup.config.seed,
        "geomsafe_version": geomsafe_version(),
        "torch": torch.__version__,
        "device": str(trainer.args.device),
        "world_size": int(trainer.args.world_size),
        "wall_s": time.perf_counter() - t_start,
        **_versions(),
    }


def _kl_reference(guards: GuardSetup) -> dict[str, Any] | None:
    """The kl guard's reference data (None without a kl guard)."""
    kl = next((g for g in guards.guards if isinstance(g, KLGuard)), None)
    if kl is None:
        return None
    return {"kl_data": kl.config.kl_data, **kl.reference_provenance()}


def _data_source(path: str) -> str:
    """The data file as an absolute path (``<memory>`` for in-memory examples)."""
    return str(Path(path).resolve()) if Path(path).is_file() else path


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"transformers": transformers.__version__, "peft": peft.__version__}
