"""One process of the data-parallel audit / predict test (``tests/test_distributed_scoring.py``).

Run under ``torchrun --nproc_per_node 2``: ``python distributed_scoring_worker.py SPEC.json``.
Every rank records the files it writes under ``spec["watch"]`` (the audit hook of
``distributed_worker.watch``) while it runs :func:`geomsafe.audit` and the two predictions of
``spec["predict"]`` with the same settings as the one-process run; then it dumps, into
``spec["side"]``, what the calls returned (``result-<rank>.json``: the audit report, the
atlas's directions and stats, each prediction's ``to_dict()``) and the recorded writes
(``writes-<rank>.json``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from distributed_worker import watch


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    seen: list[str] = []
    watch(spec["watch"], seen)

    from geomsafe.audit import audit
    from geomsafe.predict import predict

    out = Path(spec["out"])
    result = audit(spec["model"], out=out / "audit", progress=False, **spec["audit"])
    predictions = {
        name: predict(
            spec["model"], spec["data"], out=out / name, progress=False, **options
        ).to_dict()
        for name, options in spec["predict"].items()
    }
    watch.stop()  # type: ignore[attr-defined]
    atlas = result.atlas
    dump = {
        "audit": result.report,
        "directions": {n: d.tolist() for n, d in atlas.directions.items()},
        "stats": atlas.stats,
        "predict": predictions,
    }
    side = Path(spec["side"])
    side.mkdir(parents=True, exist_ok=True)
    (side / f"result-{rank}.json").write_text(json.dumps(dump))
    (side / f"writes-{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1])
