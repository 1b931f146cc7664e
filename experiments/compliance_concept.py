"""Write the harmful-compliance concept file (``geomsafe.concepts.compliance``).

    python experiments/compliance_concept.py --out FILE.jsonl [--source advbench]
        [--exclude jailbreakbench] [--data-root DIR]

Per request of ``--source`` (a harmful-behaviour CSV of the data root: ``advbench`` or
``jailbreakbench``): the pair (request; its affirmative opening against a refusal worded unlike
the evaluation's), dropping every request that near-duplicates one of the ``--exclude`` sets
(the compliance rows it will be judged on). Then guard or audit with it like any concept file:
``--concepts toxicity,...,FILE.jsonl``; its held-out half is the row ``concept:harmful_compliance``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geomsafe import __version__
from geomsafe.concepts.compliance import NEAR_DUPLICATE, compliance_concept, write_concept
from geomsafe.datasets import need_root, resolve_data_root
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.pairsets import COMPLIANCE_CSV, EXTERNAL, load_compliance_csv
from geomsafe.options import split_csv


def _requests(name: str, root: Path | None) -> list[tuple[str, str]]:
    if name not in COMPLIANCE_CSV:
        raise GeomsafeError(f"unknown compliance set {name!r}; use {', '.join(COMPLIANCE_CSV)}")
    ps = load_compliance_csv(name, need_root(root, EXTERNAL[name]))
    return [(p.prompt, p.positive) for p in ps.pairs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the concept .jsonl file to write")
    ap.add_argument("--source", default="advbench")
    ap.add_argument("--exclude", default="jailbreakbench", help="sets to hold out ('' for none)")
    ap.add_argument("--threshold", type=float, default=NEAR_DUPLICATE)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    if not args.out.endswith(".jsonl"):
        raise GeomsafeError("--out must be a .jsonl file (the concept options read them)")
    excluded = split_csv(args.exclude)
    if args.source in excluded:
        raise GeomsafeError("--source cannot also be excluded")
    root = resolve_data_root(args.data_root)
    held = [request for name in excluded for request, _ in _requests(name, root)]
    concept, dropped = compliance_concept(
        _requests(args.source, root), held, source=args.source, threshold=args.threshold
    )
    path = write_concept(
        concept,
        args.out,
        {
            "license": "MIT (the source set's); refusals written for geomsafe (Apache-2.0)",
            "excluded_sets": excluded,
            "dropped": dropped,
            "threshold": args.threshold,
            "geomsafe_version": __version__,
        },
    )
    print(f"wrote {path}: {len(concept.pairs)} requests of {args.source}, {dropped} dropped")


if __name__ == "__main__":
    try:
        main()
    except GeomsafeError as exc:
        raise SystemExit(f"error: {exc}") from None
