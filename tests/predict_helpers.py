"""Shared fixtures of the predict tests: a tiny model, a two-concept atlas, small data files."""

from __future__ import annotations

import json

from geomsafe.concepts import ConceptSet, Pair
from geomsafe.directions import extract


def tiny_setup():
    from geomsafe.testing import tiny_model

    lm = tiny_model("llama")
    rude = ConceptSet(
        "rude",
        "harmful",
        [Pair(f"q{i}", "you idiot " * (1 + i % 3), "thank you " * (1 + i % 3)) for i in range(12)],
    )
    calm = ConceptSet(
        "calm", "harmful", [Pair(f"q{i}", "all is well", "storm now") for i in range(12)]
    )
    return lm, extract(lm, [rude, calm], progress=False).atlas


def write_data(tmp_path, name, response, n=16):
    path = tmp_path / f"{name}.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"hello {i}"},
                {"role": "assistant", "content": response * (1 + i % 3)},
            ]
        }
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
