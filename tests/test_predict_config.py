from __future__ import annotations

import pytest

from geomsafe.errors import GeomsafeError
from geomsafe.predict import PredictConfig


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_examples": -1}, "max_examples must be an integer >= 1, not -1"),
        ({"max_examples": 0}, "max_examples must be"),
        ({"max_new_tokens": 0}, "max_new_tokens must be"),
        ({"filter_k": -2}, "filter (K) must be"),
        ({"attack_k": -1}, "attack (K) must be"),
        ({"method": "magic"}, "unknown method 'magic'"),
        ({"filter_score": "gradient_alignment"}, "unknown filter score"),
        ({"lr": 0}, "lr must be > 0"),
        ({"ci_level": 1.0}, "ci_level must be in (0, 1)"),
        ({"threads": 0}, "threads must be"),
        ({"sketch_rank": 0}, "sketch_rank must be"),
        ({"max_examples": 1.5}, "max_examples must be an integer"),
        ({"method": "projection_difference", "generate": False}, "needs generate=True"),
    ],
)
def test_bad_values_are_one_line_errors(options, message):
    with pytest.raises(GeomsafeError) as err:
        PredictConfig(**options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_with_options_and_legacy_gradient_flag():
    cfg = PredictConfig()
    assert cfg.with_options(max_examples=10).max_examples == 10 and cfg.max_examples == 128
    assert cfg.with_options(gradient=False).method == "projection_difference"
    assert cfg.with_options(gradient=False, generate=False).method == "prompt_anchored"
    assert cfg.with_options(gradient=True).method == "gradient_alignment"
    assert cfg.with_options(concepts=["a", "b"]).concepts == ("a", "b")
    with pytest.raises(GeomsafeError, match="unknown predict option"):
        cfg.with_options(nosuch=1)
    with pytest.raises(GeomsafeError, match="filter"):
        cfg.with_options(filter_k=-1)


def test_per_example_score_defaults_to_the_method_s_own():
    assert PredictConfig(method="behavioural").per_example_score == "behavioural"
    assert PredictConfig().per_example_score == "projection_difference"
    assert PredictConfig(method="gradient_alignment").per_example_score == ("projection_difference")
    cheap = PredictConfig(method="gradient_alignment", generate=False)
    assert cheap.per_example_score == "prompt_anchored"
    assert PredictConfig(filter_score="prompt_anchored").per_example_score == "prompt_anchored"
    assert set(PredictConfig().to_dict()) >= {"method", "filter_score", "seed"}
