"""Numerical diff of two audit folders (``audit.json``, ``atlas.json``, ``atlas.safetensors``).

    python experiments/audit_diff.py REFERENCE_DIR NEW_DIR [--rtol 1e-6] [--atol 1e-9]

Every leaf of the JSON files is compared: strings, ints and booleans must be equal, floats
must satisfy ``|a - b| <= atol + rtol * |a|``; atlas tensors likewise, element by element.
Timing fields (``seconds``, ``phases``) and the version string are skipped; a concept's
``source`` path is compared by file name (checkouts differ). Prints the number
of leaves compared, the largest absolute and relative float difference (with where), every
leaf outside tolerance, and exits 1 when there is any.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from safetensors.torch import load_file

SKIP = {"seconds", "phases", "geomsafe_version"}


class Diff:
    def __init__(self, rtol: float, atol: float) -> None:
        self.rtol, self.atol = rtol, atol
        self.n = 0
        self.max_abs = (0.0, "")
        self.max_rel = (0.0, "")
        self.bad: list[str] = []

    def number(self, path: str, a: float, b: float) -> None:
        self.n += 1
        if math.isnan(a) and math.isnan(b):
            return
        err = abs(a - b)
        rel = err / abs(a) if a else (0.0 if err == 0 else math.inf)
        if err > self.max_abs[0]:
            self.max_abs = (err, path)
        if rel > self.max_rel[0]:
            self.max_rel = (rel, path)
        if not err <= self.atol + self.rtol * abs(a):
            self.bad.append(f"{path}: {a!r} vs {b!r} (abs {err:.3g}, rel {rel:.3g})")

    def tree(self, path: str, a: object, b: object) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if k in SKIP:
                    continue
                if k == "source" and isinstance(a[k], str) and isinstance(b.get(k), str):
                    self.tree(f"{path}/{k}", Path(a[k]).name, Path(b[k]).name)
                elif k not in a or k not in b:
                    self.bad.append(f"{path}/{k}: only in {'new' if k in b else 'reference'}")
                else:
                    self.tree(f"{path}/{k}", a[k], b[k])
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                self.bad.append(f"{path}: length {len(a)} vs {len(b)}")
            for i, (x, y) in enumerate(zip(a, b, strict=False)):
                self.tree(f"{path}[{i}]", x, y)
        elif isinstance(a, float) or isinstance(b, float):
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                self.number(path, float(a), float(b))
            else:
                self.bad.append(f"{path}: {a!r} vs {b!r}")
        else:
            self.n += 1
            if a != b:
                self.bad.append(f"{path}: {a!r} vs {b!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("reference")
    ap.add_argument("new")
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--atol", type=float, default=1e-9)
    args = ap.parse_args()
    ref, new = Path(args.reference), Path(args.new)
    diff = Diff(args.rtol, args.atol)
    diff.tree("audit.json", *(json.loads((f / "audit.json").read_text()) for f in (ref, new)))
    ref_atlas, new_atlas = (f / "atlas" if (f / "atlas").is_dir() else f for f in (ref, new))
    diff.tree(
        "atlas.json", *(json.loads((f / "atlas.json").read_text()) for f in (ref_atlas, new_atlas))
    )
    a = load_file(str(ref_atlas / "atlas.safetensors"))
    b = load_file(str(new_atlas / "atlas.safetensors"))
    if set(a) != set(b):
        diff.bad.append(f"atlas.safetensors: tensors {sorted(a)} vs {sorted(b)}")
    for k in sorted(set(a) & set(b)):
        x, y = a[k].double().flatten().tolist(), b[k].double().flatten().tolist()
        diff.tree(f"atlas.safetensors/{k}", x, y)
    print(f"compared {diff.n} leaves (rtol {args.rtol}, atol {args.atol})")
    print(f"largest abs difference {diff.max_abs[0]:.3g} at {diff.max_abs[1] or '-'}")
    print(f"largest rel difference {diff.max_rel[0]:.3g} at {diff.max_rel[1] or '-'}")
    print(f"{len(diff.bad)} outside tolerance")
    for line in diff.bad[:50]:
        print("  " + line)
    sys.exit(1 if diff.bad else 0)


if __name__ == "__main__":
    main()
