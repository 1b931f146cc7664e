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
