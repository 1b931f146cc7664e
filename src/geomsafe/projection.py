"""Projection of the residual stream on atlas directions: the one place that defines it.

**Projection** of example ``x`` on concept ``c``: the residual stream at the output of decoder
layer ``l`` (``capture.HOOK_SITE``), mean-pooled over ``x``'s selected tokens (a
:mod:`geomsafe.capture` token rule: ``response``, ``prompt``, ``last`` or ``all``), dotted with
``c``'s unit direction at ``l``. ``l`` is ``c``'s layer: its best atlas layer unless given
(:func:`concept_layers`).

Built on it:

- **Prompt projection** (:func:`prompt_projection`, :func:`mean_projection`): the projection
  at the last prompt token (``tokens="last"`` on the prompt alone), the position that produces
  the first reply token.
- **Measured shift** (:func:`measured_shift`): mean prompt projection over a prompt set with
  the tuned model minus the same with the base model.
- **Projection difference** (:func:`projection_difference`, the *predicted shift*): per
  example, the projection of the data set's response minus the projection of the model's own
  response to the same prompt, both over response tokens (``tokens="response"``, the rule
  atlas directions are extracted with).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geomsafe.adapters import adapter_disabled, is_peft, view
from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import _Pooler, _prepare, _run, capture_projections
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example, encode_all
from geomsafe.models import LoadedModel

Layers = int | Mapping[str, int] | None
Prompts = Sequence[str | Example]

EMPTY_RESPONSE = "."  # stands in for an empty own response (response tokens need one token)


def concept_layers(
    atlas: FeatureAtlas,
    names: Sequence[str],
    layers: Layers = None,
    lm: LoadedModel | None = None,
) -> dict[str, int]:
    """Each concept's layer: ``layers`` when an int, ``layers[name]`` when a mapping that has
    the name, else the concept's best atlas layer. Checked: the concept is in the atlas, the
    layer is one of the atlas's, and (with ``lm``) the direction has the model's width and the
    layer is within the model's depth."""
    depth = view(lm).n_layers if lm is not None else 0
    out = {}
    for name in names:
        if name not in atlas.directions:
            raise GeomsafeError(
                f"atlas has no feature {name!r}; have {', '.join(atlas.directions) or 'none'}"
            )
        if isinstance(layers, int):
            layer = layers
        elif layers is not None and name in layers:
            layer = int(layers[name])
        else:
            layer = atlas.best_layer(name)
        if layer not in atlas.layers:
            raise GeomsafeError(f"layer {layer} is not in the atlas (layers {atlas.layers})")
        if lm is not None:
            width = int(atlas.directions[name].shape[-1])
            if width != lm.d_model:
                raise GeomsafeError(
                    f"atlas feature {name!r} has width {width} but the model has {lm.d_model}; "
                    "use an atlas built on this model"
                )
            if not 0 <= layer < depth:
                raise GeomsafeError(
                    f"atlas layer {layer} is out of range for a {depth}-layer model"
                )
        out[name] = layer
    return out


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def project(
    lm: LoadedModel,
    examples: Prompts,
    atlas: FeatureAtlas,
    names: Sequence[str] | None = None,
    *,
    tokens: str = "response",
    layers: Layers = None,
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = False,
    desc: str = "projection",
) -> dict[str, Tensor]:
    """``[N]`` float32 cpu per concept: each example's projection (module docstring) on each
    concept of ``names`` (the atlas's harmful ones when None) at its layer. One capture at the
    needed layers (:func:`~geomsafe.capture.capture_projections`: it keeps ``[N, K]``
    projections, not the ``[N, L, D]`` pooled activations), with the model in eval mode (its
    mode is restored after). A peft model is measured as it is (adapter on)."""
    where, directions, at = _directions(lm, atlas, names, layers, examples)
    lm = view(lm)
    with _eval_mode(lm.model):
        projections = capture_projections(  # running projections, never [N, L, D]
            lm,
            [e if isinstance(e, Example) else Example(e) for e in examples],
            directions,
            tokens=tokens,
            batch_size=batch_size,
            max_length=max_length,
            progress=progress,
            desc=desc,
        )
    return _by_name(projections, where, at)


def _directions(
    lm: LoadedModel,
    atlas: FeatureAtlas,
    names: Sequence[str] | None,
    layers: Layers,
    examples: Sequence[object],
) -> tuple[dict[str, int], dict[int, Tensor], dict[int, list[str]]]:
    """Each concept's layer, the ``[K, D]`` directions to project on at each layer, and the
    concepts in their row order at each layer (checked: there are concepts and examples)."""
    names = list(names) if names is not None else atlas.harmful
    if not names:
        raise GeomsafeError("no concepts to project on")
    if not examples:
        raise GeomsafeError("no examples to project")
    where = concept_layers(atlas, names, layers, lm)
    at: dict[int, list[str]] = {}
    for name, layer in where.items():
        at.setdefault(layer, []).append(name)
    directions = {
        layer: torch.stack([atlas.direction(n, layer).float().cpu() for n in group])
        for layer, group in at.items()
    }
    return where, directions, at


def _by_name(
    projections: Mapping[int, Tensor], where: dict[str, int], at: dict[int, list[str]]
) -> dict[str, Tensor]:
    return {name: projections[layer][:, at[layer].index(name)] for name, layer in where.items()}


class _TwoSelections:
    """Pools two token selections of each example from the same forward passes: the picks of
    a pass are made for ``spans`` (the first pooler's) and moved to ``other`` for the second."""

    def __init__(self, first: _Pooler, second: _Pooler, spans, other) -> None:
        self.first, self.second = first, second
        self.spans, self.other = spans, other
        self.layers = first.layers
        self.parts = None

    def add(self, store: dict, head_store: dict, picks: list) -> None:
        moved = []
        for i, row, a, _ in picks:
            off = a - self.spans[i][0]
            moved.append((i, row, off + self.other[i][0], off + self.other[i][1]))
        self.second.add(dict(store), {}, moved)
        self.first.add(store, head_store, picks)

    def reduce(self) -> None:
        self.first.reduce()
        self.second.reduce()


def project_with_prompt(
    lm: LoadedModel,
    examples: Sequence[Example],
    atlas: FeatureAtlas,
    names: Sequence[str] | None = None,
    *,
    layers: Layers = None,
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = False,
    desc: str = "projection",
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(responses, prompts)``: :func:`project` of ``examples`` over their response tokens
    and :func:`prompt_projection` of their prompts, from one forward pass per example. Under
    causal attention the last prompt token's residual in the prompt+response pass is the one
    of a prompt-only pass (equal up to float rounding: other batch shapes). An example whose
    prompt loses tokens to fit ``max_length`` with its response (so that its prompt-only pass
    would see more of it) gets a prompt-only pass of its own."""
    where, directions, at = _directions(lm, atlas, names, layers, examples)
    lm = view(lm)
    exs, chosen, encoded, spans = _prepare(
        lm, examples, sorted(directions), "response", 1, max_length
    )
    last = [(e.prompt_len - 1, e.prompt_len) for e in encoded]
    alone = encode_all(lm.tokenizer, [Example(e.prompt) for e in exs], max_length)
    pairs = enumerate(zip(encoded, alone, strict=True))
    apart = [i for i, (e, a) in pairs if a.input_ids != e.input_ids[: e.prompt_len]]
    pool = _Pooler(len(exs), chosen, lm.d_model, 0, False, spans, project_on=directions)
    at_last = _Pooler(len(exs), chosen, lm.d_model, 0, False, last, project_on=directions)
    with _eval_mode(lm.model):
        both = _TwoSelections(pool, at_last, spans, last)
        _run(lm, encoded, spans, both, batch_size, "right", progress, desc, False, False)
    responses = _by_name(pool.projections, where, at)
    prompts = _by_name(at_last.projections, where, at)
    if apart:
        own = prompt_projection(
            lm,
            [exs[i] for i in apart],
            atlas,
            list(where),
            dict(where),
            batch_size=batch_size,
            max_length=max_length,
            progress=False,
        )
        for name in where:
            prompts[name][apart] = own[name]
    return responses, prompts


def prompt_projection(
    lm: LoadedModel,
    prompts: Prompts,
    atlas: FeatureAtlas,
    names: Sequence[str] | None = None,
    layers: Layers = None,
    **kwargs: Any,
) -> dict[str, Tensor]:
    """``[N]`` per concept: the projection at the last prompt token of each prompt (a
    response, when an example has one, is ignored). ``kwargs`` go to :func:`project`."""
    only = [Example(p.prompt if isinstance(p, Example) else p) for p in prompts]
    return project(lm, only, atlas, names, tokens="last", layers=layers, **kwargs)


def mean_projection(
    lm: LoadedModel,
    prompts: Prompts,
    atlas: FeatureAtlas,
    names: Sequence[str] | None = None,
    layers: Layers = None,
    **kwargs: Any,
) -> dict[str, float]:
    """Mean over ``prompts`` of :func:`prompt_projection`, per concept."""
    per_prompt = prompt_projection(lm, prompts, atlas, names, layers, **kwargs)
    return {name: float(v.mean()) for name, v in per_prompt.items()}


def measured_shift(
    tuned: LoadedModel,
    prompts: Prompts,
    atlas: FeatureAtlas,
    names: Sequence[str] | None = None,
    layers: Layers = None,
    *,
    base: LoadedModel | None = None,
    base_projection: Mapping[str, float] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """Per concept: :func:`mean_projection` of ``tuned`` minus that of the base model on the
    same prompts. The base is ``base_projection`` (a :func:`mean_projection` computed before,
    e.g. once for many tuned models), else ``base``, else ``tuned`` itself with its adapter
    disabled (``tuned`` must then be a peft model). ``kwargs`` go to :func:`project`."""
    if base is not None and base_projection is not None:
        raise GeomsafeError("measured_shift takes a base model or a base projection, not both")
    if base is None and base_projection is None and not is_peft(tuned.model):
        raise GeomsafeError("measured_shift needs a base model or a peft (adapter) model")
    after = mean_projection(tuned, prompts, atlas, names, layers, **kwargs)
    if base_projection is not None:
        missing = [name for name in after if name not in base_projection]
        if missing:
            raise GeomsafeError(f"the base projection has no value for {', '.join(missing)}")
        before = dict(base_projection)
    elif base is not None:
        before = mean_projection(base, prompts, atlas, names, layers, **kwargs)
    else:
        with adapter_disabled(tuned.model):
            before = mean_projection(tuned, prompts, atlas, names, layers, **kwargs)
    return {name: after[name] - before[name] for name in after}


def own_response(text: str) -> str:
    """The model's own response as it is projected: an empty one becomes ``"."``
    (:data:`EMPTY_RESPONSE`), so that there is a response token to pool."""
    return text or EMPTY_RESPONSE


def own_examples(examples: Sequence[Example], own_responses: Sequence[str]) -> list[Example]:
    """Each example's prompt with the model's own response to it (:func:`own_response`)."""
    if len(examples) != len(own_responses):
        raise GeomsafeError(
            f"{len(own_responses)} own responses for {len(examples)} examples; need one each"
        )
    return [
        Example(e.prompt, own_response(text))
        for e, text in zip(examples, own_responses, strict=True)
    ]


def projection_difference(
    lm: LoadedModel,
    examples: Sequence[Example],
    atlas: FeatureAtlas,
    names: Sequence[str] | None,
    own_responses: Sequence[str],
    *,
    layers: Layers = None,
    data_projection: Mapping[str, Tensor] | None = None,
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = False,
) -> dict[str, Tensor]:
    """``[N]`` per concept: the projection of each example's (the data set's) response minus
    the projection of the model's own response to the same prompt (:func:`own_examples`), both
    over response tokens. ``data_projection`` (``project(lm, examples, atlas, names, ...)``
    computed before with the same settings) skips capturing the data's responses again."""
    own = own_examples(examples, own_responses)
    names = list(names) if names is not None else atlas.harmful

    def responses(items: Sequence[Example], desc: str) -> dict[str, Tensor]:
        return project(
            lm,
            items,
            atlas,
            names,
            layers=layers,
            batch_size=batch_size,
            max_length=max_length,
            progress=progress,
            desc=desc,
        )

    if data_projection is None:
        data_projection = responses(examples, "data responses")
    for name in names:
        if name not in data_projection or len(data_projection[name]) != len(examples):
            raise GeomsafeError(f"the data projection has no {len(examples)} values for {name!r}")
    own_projection = responses(own, "own responses")
    return {name: data_projection[name] - own_projection[name] for name in names}


__all__ = [
    "EMPTY_RESPONSE",
    "concept_layers",
    "measured_shift",
    "mean_projection",
    "own_examples",
    "own_response",
    "project",
    "project_with_prompt",
    "projection_difference",
    "prompt_projection",
]
