"""The experiments' own library: code that only the measurement scripts beside it use.

Scripts in ``experiments/`` import it as ``lib`` (their folder is first on ``sys.path``);
tests put ``experiments/`` on the path in ``tests/conftest.py``. Nothing in ``src/`` imports it.
"""
