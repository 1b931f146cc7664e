"""`predict`: how much will fine-tuning on a data set amplify each harmful trait?

The risk of concept h is clip(value, 0, 1) of the estimator named by ``PredictConfig.method``
(:mod:`geomsafe.predict.estimators`), with a bootstrap CI over the sampled examples
(:mod:`geomsafe.predict.uncertainty`) when the estimator decomposes over examples. The overall
risk is the largest concept risk; its concept is named only when that risk is > 0 and its CI
excludes 0 (``"none"`` otherwise). Per-example scores (``examples``, ``--filter``,
``--attack``) come from ``PredictConfig.per_example_score``.

Under a launcher (``torchrun --nproc_per_node N``) the loops over examples (captures, own
responses, gradients) are shared out over the processes and reduced
(:mod:`geomsafe.distributed`): every process returns the one-process result and only rank 0
writes ``out``.

Everything that can be checked without the model (options, concept names, an atlas folder, the
data file, the output folder) is checked before the model is loaded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geomsafe import distributed
from geomsafe.artefacts import geomsafe_version, prepare_out
from geomsafe.atlas import FeatureAtlas
from geomsafe.concepts import builtin_names, load_for_direction
from geomsafe.datasets import Dataset, load_dataset, resolve_data
from geomsafe.directions import extract
from geomsafe.errors import GeomsafeError
from geomsafe.models import LoadedModel, load
from geomsafe.predict.config import PredictConfig
from geomsafe.predict.estimators import ESTIMATORS, Estimate, Inputs, scale
from geomsafe.predict.examples import concentration, example_rows
from geomsafe.predict.output import write_predict
from geomsafe.predict.pairs import concept_pairs_for_direction
from geomsafe.predict.result import NO_CONCEPT, ConceptRisk, PredictResult
from geomsafe.predict.uncertainty import bootstrap_mean_ci
from geomsafe.projection import concept_layers
from geomsafe.threads import torch_threads


def harmful_atlas(
    lm: LoadedModel, max_pairs: int = 64, seed: int = 0, progress: bool = True
) -> FeatureAtlas:
    """An atlas of the built-in harmful concepts (used when no audit atlas is given)."""
    sets = [load_for_direction(n).subset(max_pairs, seed) for n in builtin_names("harmful")]
    return extract(lm, sets, seed=seed, progress=progress).atlas


def _concepts(cfg: PredictConfig, fa: FeatureAtlas | None) -> list[str]:
    """The concepts to score, checked before any model work."""
    builtin = builtin_names("harmful")
    if fa is not None:
        names = list(cfg.concepts or fa.harmful)
        if not names:
            raise GeomsafeError("no harmful concepts to predict (the atlas has none)")
        concept_layers(fa, names)  # each is in the atlas
    else:
        names = list(cfg.concepts or builtin)
        unknown = [n for n in names if n not in builtin]
        if unknown:
            raise GeomsafeError(
                f"unknown harmful concept {unknown[0]!r}; built-in harmful: {', '.join(builtin)}"
                " (or give an audit atlas with --atlas)"
            )
    uses_pairs = "behavioural" in (cfg.method, cfg.per_example_score)
    if uses_pairs and (missing := [n for n in names if n not in builtin]):
        raise GeomsafeError(
            f"concept {missing[0]!r} has no built-in response pairs: the behavioural estimate "
            "needs built-in harmful concepts (use --method projection_difference)"
        )
    return names


def _atlas(atlas: str | Path | FeatureAtlas | None) -> tuple[FeatureAtlas | None, str | None]:
    if isinstance(atlas, FeatureAtlas):
        return atlas, "given"
    if atlas:
        return FeatureAtlas.load(atlas), str(Path(atlas).resolve())
    return None, None


@contextlib.contextmanager
def _template_errors(model: object) -> Iterator[None]:
    """A chat template that fails to render (e.g. refused by jinja's sandbox) as one line."""
    import jinja2

    try:
        yield
    except jinja2.TemplateError as exc:
        name = getattr(model, "spec", model)
        raise GeomsafeError(f"the chat template of {name} failed: {exc}") from None


def _interval(est: Estimate, names: list[str], cfg: PredictConfig) -> dict[str, tuple]:
    if est.per_example is None or est.per_example.shape[0] < 2:
        return {}
    low, high = bootstrap_mean_ci(est.per_example, cfg.n_boot, cfg.ci_level, cfg.seed)
    return {n: (float(low[k]), float(high[k])) for k, n in enumerate(names)}


def _clip(v: float) -> float:
    return min(1.0, max(0.0, v))


def predict(
    model: str | LoadedModel = "default",
    data: str | Path | Dataset = "",
    *,
    out: str | Path | None = None,
    atlas: str | Path | FeatureAtlas | None = None,
    config: PredictConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **options: Any,
) -> PredictResult:
    """Predict how fine-tuning on ``data`` moves each harmful concept (module docstring).
    ``options`` are :class:`PredictConfig` fields that replace ``config``'s. ``out`` must be
    new, empty or hold a previous prediction (replaced only with ``overwrite``); its files are
    written as one set."""
    t0 = time.perf_counter()
    cfg = (config or PredictConfig()).with_options(**options)
    ds = data if isinstance(data, Dataset) else load_dataset(resolve_data(data))
    fa, atlas_source = _atlas(atlas)
    names = _concepts(cfg, fa)
    folder = prepare_out(out, "predict", overwrite=overwrite) if out is not None else None
    with distributed.data_parallel(), torch_threads(cfg.threads), _template_errors(model):
        progress = progress and distributed.is_main()
        lm = model if isinstance(model, LoadedModel) else load(model)
        extracted = None
        if fa is None and any(
            ESTIMATORS[m].needs_atlas for m in (cfg.method, cfg.per_example_score)
        ):
            fa = extracted = harmful_atlas(lm, seed=cfg.seed, progress=progress)
            atlas_source = "extracted (built-in harmful concepts)"
        layers = concept_layers(fa, names, lm=lm) if fa is not None else {}
        sample = ds.sample(cfg.max_examples, cfg.seed)
        x = Inputs(lm, sample.examples, names, cfg, fa, progress)
        main = ESTIMATORS[cfg.method].build()(x)
        estimates = {main.method: main}
        side = ["prompt_anchored", "projection_difference"] if fa is not None else []
        for m in [*side, cfg.per_example_score]:
            if m not in estimates and (cfg.generate or not ESTIMATORS[m].needs_generate):
                estimates[m] = ESTIMATORS[m].build()(x)
    ci = _interval(main, names, cfg)
    results = []
    for n in names:
        cols = {k: v[n] for e in estimates.values() for k, v in e.columns.items()}
        results.append(
            ConceptRisk(
                concept=n,
                risk=_clip(main.value[n]),
                method=main.method,
                risk_ci=(_clip(ci[n][0]), _clip(ci[n][1])) if n in ci else None,
                layer=layers.get(n),
                scale=scale(fa, n, layers[n]) if fa is not None else None,
                **cols,
            )
        )
    worst = max(results, key=lambda r: r.risk)
    named = worst.risk > 0 and (worst.concept not in ci or ci[worst.concept][0] > 0)
    scores = estimates[cfg.per_example_score].per_example
    assert scores is not None  # every per-example score decomposes
    result = PredictResult(
        concepts=results,
        overall_risk=worst.risk,
        overall_concept=worst.concept if named else NO_CONCEPT,
        overall_ci=worst.risk_ci,
        method=main.method,
        examples=example_rows(sample.records, scores, names, x.cache.get("own")),
        n_examples=len(sample),
        n_total=len(ds),
        example_score=cfg.per_example_score,
        concentration=concentration(scores, names, worst.concept),
        provenance={
            **lm.provenance(),
            "data": ds.path,
            "data_sha256": ds.sha256,
            "seed": cfg.seed,
            "sample_seed": cfg.seed,
            "atlas_source": atlas_source,
            "atlas": fa.provenance if fa is not None else None,
            "hook_site": fa.provenance.get("hook_site") if fa is not None else None,
            "method": main.method,
            "config": cfg.to_dict(),
            "pairs": _pairs_provenance(names, cfg) if "behavioural" in estimates else None,
            "geomsafe_version": geomsafe_version(),
            "seconds": time.perf_counter() - t0,
        },
    )
    if folder is not None and distributed.is_main():
        with folder.writing() as work:
            write_predict(work, result, ds, extracted, cfg)
    return result


def _pairs_provenance(names: list[str], cfg: PredictConfig) -> dict[str, dict[str, Any]]:
    out = {}
    for n in names:
        ps = concept_pairs_for_direction(n).subset(cfg.pairs_per_concept, cfg.seed)
        out[n] = {"n_pairs": len(ps.pairs), "sha256": ps.sha256()}
    return out
