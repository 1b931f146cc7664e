"""Traffic for the firewall: benign sequences to calibrate on and to evaluate with, and
held-out harmful requests.

- **Benign** (:func:`benign_split`): the built-in task sets (``geomsafe/data/tasks``; prompt
  and response, 4 × 150) and XSTest's 250 safe prompts (prompt only; read from the data root).
  Each source is shuffled with the seed and cut: the first ``share`` is the **calibration**
  part, the rest the **evaluation** part, so false-positive rates are measured on prompts that
  did not set the thresholds. XSTest is skipped (and said so) when the data root is absent.
- **Harmful** (:func:`harmful_items`): public harmful-request sets, never used to calibrate:
  AdvBench (``advbench/harmful_behaviors.csv``), HarmBench's standard behaviours (test and
  validation; the contextual and copyright ones need a context or are not requests for harm),
  JailbreakBench and StrongREJECT (``harmful-behaviors/``), and XSTest's unsafe contrast
  prompts.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from geomsafe.datasets import builtin_task, load_dataset, need_root, resolve_data_root
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.prompts import load_xstest
from geomsafe.formatting import Example
from geomsafe.textfile import read_text

# name -> (file under the data root, prompt column, filter column, kept values)
HARMFUL_SETS: dict[str, tuple[tuple[str, ...], str, str | None, tuple[str, ...]]] = {
    "advbench": (("advbench/harmful_behaviors.csv",), "goal", None, ()),
    "harmbench": (
        ("harmful-behaviors/harmbench_test.csv", "harmful-behaviors/harmbench_val.csv"),
        "Behavior",
        "FunctionalCategory",
        ("standard",),
    ),
    "jailbreakbench": (("harmful-behaviors/jailbreakbench.csv",), "Goal", None, ()),
    "strongreject": (("harmful-behaviors/strongreject.csv",), "forbidden_prompt", None, ()),
}
DEFAULT_HARMFUL = tuple(HARMFUL_SETS)


@dataclass(frozen=True)
class Item:
    """One sequence of traffic: ``id`` unique within its source, ``source`` such as
    ``task:code``, ``xstest`` or ``advbench``."""

    id: str
    source: str
    example: Example


@dataclass
class BenignSplit:
    calibration: list[Item]
    evaluation: list[Item]
    notes: list[str] = field(default_factory=list)


def builtin_tasks() -> list[str]:
    """Names of the built-in task sets shipped in ``geomsafe/data/tasks``."""
    folder = resources.files("geomsafe") / "data" / "tasks"
    return sorted(
        p.name.removesuffix(".jsonl") for p in folder.iterdir() if p.name.endswith(".jsonl")
    )


def task_items() -> list[Item]:
    """The built-in task examples (prompt and response), ids ``<task>-<line>``."""
    out = []
    for task in builtin_tasks():
        data = load_dataset(builtin_task(task))
        out += [Item(f"{task}-{r.line}", f"task:{task}", r.example) for r in data.records]
    return out


def xstest_items(data_root: str | Path | None, label: str = "safe") -> list[Item]:
    root = need_root(resolve_data_root(data_root), "xstest")
    name = "xstest" if label == "safe" else "xstest-unsafe"
    return [Item(p.id, name, p.example()) for p in load_xstest(root, label)]


def split(items: Sequence[Item], share: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Per source: shuffle with ``seed`` and keep the first ``round(share * n)`` for
    calibration; both parts keep the items' original order."""
    if not 0 < share < 1:
        raise GeomsafeError(f"calibration share must be in (0, 1), not {share}")
    calib: set[str] = set()
    by_source: dict[str, list[Item]] = {}
    for item in items:
        by_source.setdefault(item.source, []).append(item)
    for source in sorted(by_source):
        group = list(by_source[source])
        random.Random(f"{seed}:{source}").shuffle(group)
        calib.update(f"{source}/{i.id}" for i in group[: round(share * len(group))])
    first = [i for i in items if f"{i.source}/{i.id}" in calib]
    rest = [i for i in items if f"{i.source}/{i.id}" not in calib]
    return first, rest


def benign_split(
    data_root: str | Path | None = None, share: float = 0.5, seed: int = 0, xstest: bool = True
) -> BenignSplit:
    """Built-in task examples and (when found) XSTest safe prompts, split for calibration and
    evaluation (see the module docstring)."""
    items = task_items()
    notes = []
    if xstest:
        try:
            items += xstest_items(data_root)
        except GeomsafeError as exc:
            notes.append(f"XSTest safe prompts skipped: {exc}")
    calib, rest = split(items, share, seed)
    return BenignSplit(calib, rest, notes)


def harmful_items(
    names: Sequence[str] = DEFAULT_HARMFUL, data_root: str | Path | None = None
) -> list[Item]:
    """Held-out harmful requests from the named public sets (``xstest-unsafe`` too)."""
    root = resolve_data_root(data_root)
    out: list[Item] = []
    for name in names:
        if name == "xstest-unsafe":
            out += xstest_items(root, "unsafe")
            continue
        if name not in HARMFUL_SETS:
            known = ", ".join([*HARMFUL_SETS, "xstest-unsafe"])
            raise GeomsafeError(f"unknown harmful set {name!r}; use {known}")
        files, column, filter_col, keep = HARMFUL_SETS[name]
        for rel in files:
            path = need_root(root, rel)
            rows = list(csv.DictReader(io.StringIO(read_text(path), newline="")))
            if rows and column not in rows[0]:
                raise GeomsafeError(f"{path}: no column {column!r}")
            for n, row in enumerate(rows, 2):
                if filter_col is not None and row.get(filter_col) not in keep:
                    continue
                text = (row[column] or "").strip()
                if text:
                    out.append(Item(f"{Path(rel).stem}-{n}", name, Example(text)))
    return out


def sample(items: Sequence[Item], n: int | None, seed: int = 0) -> list[Item]:
    """At most ``n`` items per source, a seeded sample in the original order."""
    if n is None:
        return list(items)
    by_source: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_source.setdefault(item.source, []).append(i)
    keep: set[int] = set()
    for source, idx in by_source.items():
        rng = random.Random(f"{seed}:{source}")
        keep.update(idx if n >= len(idx) else rng.sample(idx, n))
    return [items[i] for i in sorted(keep)]
