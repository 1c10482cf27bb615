"""The one exception type users see as a one-line message (bad paths, shapes, checkpoints, arguments)."""


class CrossFlowError(Exception):
    """A user-facing error: the CLIs print ``error: <message>`` and exit with status 2, no traceback."""
