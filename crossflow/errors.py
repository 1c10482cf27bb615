"""The one exception type users see as a one-line message (bad paths, shapes, checkpoints, arguments)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class CrossFlowError(Exception):
    """A user-facing error: the CLIs print ``error: <message>`` and exit with status 2, no traceback."""


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For command-line entry points: a :class:`CrossFlowError` becomes one line on stderr and exit status 2."""
    try:
        yield
    except CrossFlowError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
