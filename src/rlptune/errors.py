"""The one exception type users see.

Anything a user can cause (a bad path, a mistyped config field, a corrupt image, an adapter from another
backbone) raises :class:`RlptuneError` with a one-line message that names the file or field and says what was
expected. The CLI prints it without a traceback; library callers can catch one type.
"""

from __future__ import annotations


class RlptuneError(Exception):
    """A user-facing error with a one-line, actionable message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
