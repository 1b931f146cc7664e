"""docs/architecture.md stays true to the tree: the files it links and lists exist, and the
library never imports the experiments' code (the line between src/ and experiments/lib/)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def test_every_linked_and_listed_file_exists():
    text = DOC.read_text(encoding="utf-8")
    links = re.findall(r"\]\((\.\./[^)#]+|[a-z_]+\.md)\)", text)
    sources = re.findall(r"^  - (src/\S+)$", text, flags=re.M)
    assert links and sources
    missing = [p for p in links if not (DOC.parent / p).exists()]
    missing += [p for p in sources if not (ROOT / p).exists()]
    assert not missing, missing


def test_the_library_does_not_import_the_experiments():
    offenders = []
    for path in (ROOT / "src" / "geomsafe").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(n.split(".")[0] in {"lib", "experiments", "_common"} for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
