"""The top-level API: lazy, complete, and callable command modules."""

from __future__ import annotations

import subprocess
import sys

import geomsafe


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return done.stdout.strip()


def test_import_geomsafe_imports_no_torch():
    assert _run("import sys, geomsafe; print('torch' in sys.modules)") == "False"


def test_cli_help_imports_no_torch():
    code = (
        "import sys; sys.argv = ['geomsafe', '--help']\n"
        "from geomsafe.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = _run(code)
    assert out.endswith("False") and "audit" in out and "finetune" in out


def test_every_exported_name_resolves():
    import importlib

    predict = importlib.import_module("geomsafe.predict")
    for name in geomsafe.__all__:
        if name == "PredictConfig" and not hasattr(predict, name):
            continue  # made by the predict branch
        assert getattr(geomsafe, name) is not None, name
    assert set(geomsafe.__all__) <= set(dir(geomsafe))


def test_commands_are_callable_however_reached():
    import importlib

    importlib.import_module("geomsafe.audit.config")  # binds geomsafe.audit to the package
    from geomsafe.audit import audit as audit_fn

    assert callable(geomsafe.audit) and geomsafe.audit.audit is audit_fn
    for name in ("audit", "predict", "evaluate", "report", "bench", "toy"):
        assert callable(getattr(geomsafe, name)), name
    assert geomsafe.finetune.__name__ == "finetune"
    assert geomsafe.load.__module__ == "geomsafe.models"


def test_calling_a_command_module_runs_the_command(tmp_path):
    (tmp_path / "x.txt").write_text("not a result")
    try:
        geomsafe.report(tmp_path)
    except geomsafe.GeomsafeError as exc:
        assert "no geomsafe results" in str(exc)
    else:
        raise AssertionError("report of a folder without results must fail")


def test_unknown_name_is_an_attribute_error():
    try:
        geomsafe.nope  # noqa: B018
    except AttributeError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError


#: What each package face offers: the names a user calls. Everything else is imported from its
#: module by the code that needs it (review §1, issue 29).
FACES = {
    "concepts": ["KINDS", "SPLIT_SEED", "ConceptSet", "Pair", "builtin_names", "load_builtin",
                 "load_concept", "load_for_direction", "load_for_evaluation", "load_jsonl",
                 "load_persona", "load_toxigen", "split_concept", "split_record"],
    "evaluate": ["Change", "EvalConfig", "EvalResult", "Metric", "ModelEval", "evaluate",
                 "load_eval"],
    "firewall": ["CalibrationConfig", "Check", "Firewall", "RunResult", "Session", "Verdict",
                 "calibrate", "install", "rethreshold", "run", "screen"],
    "guard": ["GUARDS", "AblateGuard", "AtlasGuard", "CovarianceGuard", "Guard", "GuardConfig",
              "KLGuard", "MonitorGuard", "OrthogonalGuard", "PilotConfig", "ProjectionGuard",
              "SteerGuard", "build_guards", "register"],
    "predict": ["ConceptRisk", "PredictConfig", "PredictResult", "predict"],
    "toy": ["EntangleConfig", "PhaseConfig", "SweepConfig", "ToyConfig", "ToyModel",
            "ToyOrthogonalGuard", "ToyResult", "ToyTrainConfig", "run_entanglement",
            "run_phase_diagram", "run_sweep", "toy", "train"],
    "train": ["FinetuneResult", "GuardCallback", "GuardedTrainer", "TrainConfig", "finetune"],
}


def test_package_faces_offer_the_user_names_only():
    import importlib
    import types

    for pkg, names in FACES.items():
        face = importlib.import_module(f"geomsafe.{pkg}")
        assert sorted(face.__all__) == sorted(names), pkg
        public = {
            n
            for n, v in vars(face).items()
            if not n.startswith("_") and n != "annotations" and not isinstance(v, types.ModuleType)
        }
        assert public == set(names), (pkg, sorted(public - set(names)))
