"""The concept library: contrastive pair sets and their loaders (built-in sets, user ``.jsonl``
files, Anthropic persona statements, ToxiGen sentences). The user names are re-exported by
:mod:`geomsafe.concepts`, whose docstring describes the formats."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from geomsafe.errors import GeomsafeError
from geomsafe.hashing import rows_sha256
from geomsafe.textfile import json_lines, read_text

KINDS = ("harmful", "target", "control")


@dataclass(frozen=True)
class Pair:
    prompt: str
    positive: str
    negative: str


@dataclass
class ConceptSet:
    """A named concept and its pairs. ``kind`` is harmful, target or control."""

    name: str
    kind: str
    pairs: list[Pair]
    description: str = ""
    source: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    def data_hash(self) -> str:
        return rows_sha256((p.prompt, p.positive, p.negative) for p in self.pairs)[:16]

    def subset(self, n: int | None, seed: int = 0) -> ConceptSet:
        """At most ``n`` pairs, a fixed random sample (all when ``n`` is None)."""
        if n is None or n >= len(self.pairs):
            return self
        rng = random.Random(seed)
        keep = sorted(rng.sample(range(len(self.pairs)), n))
        return ConceptSet(
            self.name,
            self.kind,
            [self.pairs[i] for i in keep],
            self.description,
            self.source,
            dict(self.meta),
        )

    def split(self, seed: int = 0) -> tuple[ConceptSet, ConceptSet]:
        """(direction half, evaluation half) by prompt, seeded (:mod:`geomsafe.concepts.split`)."""
        from geomsafe.concepts import split

        return split.split_concept(self, seed)

    def shuffled_labels(self, seed: int = 0, name: str | None = None) -> ConceptSet:
        """A control concept: each pair's positive/negative swapped by a fair coin."""
        rng = random.Random(seed)
        pairs = [
            Pair(p.prompt, p.negative, p.positive) if rng.random() < 0.5 else p for p in self.pairs
        ]
        return ConceptSet(
            name or f"random_labels({self.name})",
            "control",
            pairs,
            f"{self.name} with positive/negative labels shuffled (a null concept)",
            self.source,
            {**self.meta, "shuffle_seed": str(seed)},
        )


def _data_dir():
    return resources.files("geomsafe.concepts") / "data"


def builtin_names(kind: str | None = None) -> list[str]:
    names = sorted(p.name[:-6] for p in _data_dir().iterdir() if p.name.endswith(".jsonl"))
    if kind is None:
        return names
    return [n for n in names if load_builtin(n).kind == kind]


def load_builtin(name: str) -> ConceptSet:
    path = _data_dir() / f"{name}.jsonl"
    if not path.is_file():
        raise GeomsafeError(
            f"unknown concept {name!r}; built-in: {', '.join(builtin_names())} "
            "(or pass a .jsonl file)"
        )
    return _parse_pairs(path.read_text(encoding="utf-8"), str(path), default_name=name)


def _parse_pairs(text: str, where: str, default_name: str, kind: str = "target") -> ConceptSet:
    header: dict = {}
    pairs: list[Pair] = []
    for lineno, _, obj in json_lines(text, where):
        if not isinstance(obj, dict):
            raise GeomsafeError(f"{where}:{lineno}: expected a JSON object")
        if "concept" in obj and not pairs and not header:
            header = obj
            continue
        missing = [k for k in ("prompt", "positive", "negative") if not isinstance(obj.get(k), str)]
        if missing:
            raise GeomsafeError(f"{where}:{lineno}: missing string field(s) {', '.join(missing)}")
        pairs.append(Pair(obj["prompt"], obj["positive"], obj["negative"]))
    if len(pairs) < 4:
        raise GeomsafeError(f"{where}: needs at least 4 pairs, found {len(pairs)}")
    kind = header.get("kind", kind)
    if kind not in KINDS:
        raise GeomsafeError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return ConceptSet(
        header.get("concept", default_name), kind, pairs, header.get("description", ""), where
    )


def load_jsonl(path: str | Path, kind: str = "target", name: str | None = None) -> ConceptSet:
    """A user concept file in the built-in format (header line optional)."""
    path = Path(path)
    if not path.is_file():
        raise GeomsafeError(f"concept file not found: {path}")
    cs = _parse_pairs(read_text(path), str(path), path.stem, kind)
    if name:
        cs.name = name
    return cs


PERSONA_PROMPT = "Tell me one thing you believe about yourself or the world."


def load_persona(
    path: str | Path, kind: str = "harmful", max_pairs: int | None = None
) -> ConceptSet:
    """Anthropic persona statements as pairs: a statement that matches the trait (positive)
    against one that does not (negative), both as the assistant's reply to one fixed prompt."""
    path = Path(path)
    yes, no = [], []
    for lineno, _, obj in json_lines(read_text(path), str(path)):
        try:
            matches = obj["answer_matching_behavior"].strip() == "Yes"
            (yes if matches else no).append(obj["statement"])
        except (KeyError, AttributeError, TypeError) as exc:
            raise GeomsafeError(f"{path}:{lineno}: not a persona statement record") from exc
    n = min(len(yes), len(no), max_pairs or 10**9)
    pairs = [Pair(PERSONA_PROMPT, yes[i], no[i]) for i in range(n)]
    if n < 4:
        raise GeomsafeError(f"{path}: needs statements on both sides, found {len(yes)}/{len(no)}")
    return ConceptSet(path.stem, kind, pairs, f"persona trait '{path.stem}'", str(path))


TOXIGEN_PROMPT = "Say something about {group}."


def load_toxigen(folder: str | Path, max_pairs: int | None = None) -> ConceptSet:
    """ToxiGen demonstrations: a hateful sentence (positive) against a neutral sentence about
    the same group (negative)."""
    folder = Path(folder)
    pairs: list[Pair] = []
    for hate in sorted(folder.rglob("hate_*_sentences.txt")):
        neutral = hate.with_name(hate.name.replace("hate_", "neutral_", 1))
        if not neutral.is_file():
            continue
        group = hate.name[len("hate_") : -len("_sentences.txt")].replace("_", " ")
        h = [s.strip() for s in read_text(hate).splitlines() if s.strip()]
        n = [s.strip() for s in read_text(neutral).splitlines() if s.strip()]
        prompt = TOXIGEN_PROMPT.format(group=group)
        pairs += [Pair(prompt, a.lstrip("- "), b.lstrip("- ")) for a, b in zip(h, n, strict=False)]
    if len(pairs) < 4:
        raise GeomsafeError(f"{folder}: no hate_*/neutral_* sentence files found")
    if max_pairs:
        pairs = pairs[:: max(1, len(pairs) // max_pairs)][:max_pairs]
    return ConceptSet("toxigen_hate", "harmful", pairs, "ToxiGen hateful vs neutral", str(folder))


def load_concept(spec: str, kind: str | None = None) -> ConceptSet:
    """A built-in name, a user ``.jsonl`` file, a persona ``.jsonl`` (``persona:PATH``) or a
    ToxiGen folder (``toxigen:PATH``)."""
    if spec.startswith("persona:"):
        return load_persona(spec.removeprefix("persona:"), kind or "harmful")
    if spec.startswith("toxigen:"):
        return load_toxigen(spec.removeprefix("toxigen:"))
    if spec.endswith(".jsonl"):
        return load_jsonl(spec, kind or "target")
    return load_builtin(spec)


__all__ = [
    "KINDS",
    "ConceptSet",
    "Pair",
    "builtin_names",
    "load_builtin",
    "load_concept",
    "load_jsonl",
    "load_persona",
    "load_toxigen",
]
