"""User-facing errors.

Every problem caused by the user's input (a bad file, a bad argument, a bad config) is raised as
:class:`MddoseError` (a ``ValueError``) with a one-line message that names the file or argument and the
problem. The CLI prints such errors as one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import os


class MddoseError(ValueError):
    """An error in the user's input: one line naming the file or argument and the problem."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        if path is not None:
            message = f"{os.fspath(path)}: {message}"
        super().__init__(message)
