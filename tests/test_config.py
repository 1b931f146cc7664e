"""Config dataclasses: checked when made, overridable by name, and the CLI's defaults."""

from __future__ import annotations

import dataclasses

import pytest

from geomsafe.audit import AuditConfig
from geomsafe.bench import BenchConfig
from geomsafe.cli.audit import audit_cmd
from geomsafe.cli.evaluate import evaluate as evaluate_cmd
from geomsafe.cli.finetune import finetune as finetune_cmd
from geomsafe.config import help_of
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate import EvalConfig
from geomsafe.evaluate.generate import SamplingConfig
from geomsafe.firewall.calibration import CalibrationConfig
from geomsafe.guard import GuardConfig, PilotConfig
from geomsafe.predict import PredictConfig
from geomsafe.train import TrainConfig

# every config of the library (the toy's are the experiment's, see geomsafe.toy)
CONFIGS = (
    AuditConfig,
    BenchConfig,
    CalibrationConfig,
    EvalConfig,
    GuardConfig,
    PilotConfig,
    PredictConfig,
    SamplingConfig,
    TrainConfig,
)


def _defaults(command) -> dict:
    return {p.name: p.default for p in command.params}


def test_cli_defaults_are_the_dataclass_defaults():
    audit = _defaults(audit_cmd)
    for f in dataclasses.fields(AuditConfig):
        if f.name in audit:
            assert audit[f.name] == f.default, f.name
            assert audit_cmd.params[[p.name for p in audit_cmd.params].index(f.name)].help
    evaluate, cfg = _defaults(evaluate_cmd), EvalConfig()
    for name in ("n_prompts", "samples_per_prompt", "max_new_tokens", "n_boot", "seed"):
        assert evaluate[name] == getattr(cfg, name), name
    finetune, train = _defaults(finetune_cmd), TrainConfig()
    assert finetune["learning_rate"] == train.learning_rate
    for name in ("epochs", "max_steps", "batch_size", "grad_accum", "max_length", "lora_r"):
        assert finetune[name] == getattr(train, name), name
    assert finetune["save_steps"] == train.save_steps and finetune["seed"] == train.seed


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"n_perm": 0}, "n_perm must be >= 1"),
        ({"n_perm": -5}, "n_perm must be >= 1"),
        ({"n_boot": 0}, "n_boot must be >= 1"),
        ({"max_pairs": -1}, "max_pairs must be >= 2"),
        ({"layers": "a:b"}, "bad layers 'a:b'"),
        ({"band": "2:0"}, "the band is empty"),
        ({"layer": -1}, "layer must be >= 0"),
        ({"tokens": "every"}, "tokens must be one of"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"n_perms": 3}, "unknown audit option"),
    ],
)
def test_audit_config_refuses_bad_values(options, match):
    with pytest.raises(GeomsafeError, match=match):
        AuditConfig().with_options(**options)


def test_audit_config_parses_cli_text():
    cfg = AuditConfig(target="code, empathy", layers="2:5", band="3,4")
    assert cfg.target == ("code", "empathy") and cfg.layers == (2, 3, 4) and cfg.band == (3, 4)
    assert cfg.to_dict()["layers"] == [2, 3, 4]
    assert help_of(AuditConfig, "n_perm")


def test_every_config_checks_itself_when_made():
    with pytest.raises(GeomsafeError, match="n_boot"):
        EvalConfig(n_boot=0)
    with pytest.raises(GeomsafeError, match="steps"):
        BenchConfig(steps=0)
    with pytest.raises(GeomsafeError, match="lora_r"):
        TrainConfig(lora_r=0)
    with pytest.raises(GeomsafeError, match="weight"):
        GuardConfig(weight=-1)
    with pytest.raises(GeomsafeError, match="unknown finetune option"):
        TrainConfig().with_options(lr=1)
    assert TrainConfig().with_options(max_steps=3).max_steps == 3
    assert BenchConfig().with_options(steps=2).steps == 2


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_has_help_and_the_class_checks_itself(cls):
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    assert "__post_init__" in vars(cls), cls.__name__
    cls()  # the defaults are valid


@pytest.mark.parametrize(
    ("cls", "bad"),
    [
        (SamplingConfig, {"top_p": 0.0}),
        (SamplingConfig, {"samples_per_prompt": 0}),
        (PilotConfig, {"pcs": 0}),
        (CalibrationConfig, {"fpr": 1.0}),
        (PredictConfig, {"n_boot": 0}),
    ],
)
def test_bad_values_raise_at_construction_in_one_line(cls, bad):
    with pytest.raises(GeomsafeError) as err:
        cls(**bad)
    assert next(iter(bad)) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("config", "command"),
    [
        (AuditConfig(), "audit"),
        (BenchConfig(), "bench"),
        (CalibrationConfig(), "calibration"),
        (EvalConfig(), "evaluate"),
        (PredictConfig(), "predict"),
        (TrainConfig(), "finetune"),
    ],
)
def test_with_options_is_the_shared_one(config, command):
    with pytest.raises(GeomsafeError, match=f"unknown {command} option"):
        config.with_options(nosuch=1)
    assert config.with_options(seed=7).seed == 7 and config.seed == 0
