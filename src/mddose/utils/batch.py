"""Batch work that goes on past a bad item: the one skip-and-report helper.

Training data, the slice cache and whole-folder prediction each take many patients; one that cannot be read or
processed — whatever the exception — is skipped and reported by :func:`skip_item`: one warning line naming it
(the traceback at debug level for an unexpected exception), and ``(name, message)`` for the run's record.
"""

from __future__ import annotations

from typing import Any

from mddose.errors import MddoseError
from mddose.utils.fs import describe_error
from mddose.utils.log import logger as log


def item_name(item: Any) -> str:
    """A patient's id, else the item itself as text (a path)."""
    return str(getattr(item, "id", item))


def skip_item(item: Any, exc: BaseException, what: str = "patient") -> tuple[str, str]:
    """``(name, one-line message naming it)`` of an unusable ``item``, logged as one warning line
    ``"skipping <what>: <message>"``; the traceback goes to the debug log unless ``exc`` is an
    :class:`MddoseError` or an ``OSError`` (whose one line says it all)."""
    name = item_name(item)
    msg = describe_error(exc)
    if name not in msg:
        msg = f"{name}: {msg}"
    log.warning("skipping %s: %s", what, msg)
    if not isinstance(exc, (MddoseError, OSError)):
        log.debug("traceback of the failure of %s", name, exc_info=exc)
    return name, msg
