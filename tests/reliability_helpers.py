"""What the reliability tests check of a command's end: its stderr lines without progress
bars, and the one ``geomsafe: error: ...`` line with exit code 2; and how a child that will get
Ctrl-C is started."""

from __future__ import annotations

import re

PROGRESS = re.compile(r"\d+%\||it/s\]|s/it\]")


def lines_of(text: str) -> list[str]:
    """Non-blank lines of ``text`` without progress bars."""
    text = text.replace("\r", "\n")
    return [ln for ln in text.splitlines() if ln.strip() and not PROGRESS.search(ln)]


def one_error_line(result, *parts: str) -> str:
    """The single error line of a click ``Result`` that exited 2, checked to hold ``parts``."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = lines_of(result.output)
    assert len(lines) == 1 and lines[0].startswith("geomsafe: error: "), result.output
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


# the first statement of a ``python -c`` child that the test interrupts: Ctrl-C raises
# KeyboardInterrupt again. A test run started in the background by a shell without job control
# inherits SIGINT ignored, and a Python child that starts with SIGINT ignored never raises it.
DEFAULT_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
