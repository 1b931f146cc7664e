"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class GeomsafeError(Exception):
    """A user-facing error: bad input, missing model, malformed data.

    The message must fit on one line and say what to fix.
    """
