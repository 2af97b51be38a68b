"""What every patient reader shares: safe file access and the patient id of a folder.

* :func:`regular_file` / :func:`list_dir` — a reader opens only regular files: a FIFO would block it
  forever, a broken symbolic link or an unreadable file would end in a traceback. Each is one-line
  :class:`~mddose.errors.MddoseError` naming the path instead.
* :func:`reader_patient_id` — the id of a patient read from a folder: the id stored in a user file
  (``mddose.json``, ``patient.json``) or else the folder's name; an unsafe one (``"../../x"``, an absolute
  path, spaces, ...) is converted with :func:`mddose.data.patient.safe_id` and the conversion is logged
  once per (file, id), so that outputs named after the id always stay inside their output folder.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from mddose.data.patient import is_safe_id, safe_id
from mddose.errors import MddoseError
from mddose.utils.log import log_once

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def _describe(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def regular_file(path: str | os.PathLike, what: str = "file", *, required: bool = True) -> Path | None:
    """``path`` if it is a regular file (symbolic links followed); None if it is absent and not ``required``.

    Raises :class:`MddoseError` naming ``path`` for a missing required file, a broken symbolic link, a
    FIFO / socket / device / directory, or a file that can't be examined (permission denied). Never opens
    the file, so a FIFO can't block.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise MddoseError(f"{what} is a broken symbolic link (to {os.readlink(path)})", path) from None
        if required:
            raise MddoseError(f"missing {what}", path) from None
        return None
    except OSError as exc:
        raise MddoseError(f"cannot examine {what} ({exc.strerror or exc})", path) from None
    if not stat.S_ISREG(st.st_mode):
        raise MddoseError(f"{what} is {_describe(st.st_mode)}, not a regular file", path)
    if not os.access(path, os.R_OK):
        raise MddoseError(f"{what} is not readable (permission denied)", path)
    return path


def list_dir(directory: str | os.PathLike) -> list[Path]:
    """The entries of ``directory`` (sorted by name); unreadable → one-line :class:`MddoseError`."""
    directory = Path(directory)
    try:
        return sorted(directory / name for name in os.listdir(directory))
    except PermissionError:
        raise MddoseError("cannot read directory (permission denied)", directory) from None
    except FileNotFoundError:
        raise MddoseError("no such directory", directory) from None
    except NotADirectoryError:
        raise MddoseError("not a directory", directory) from None
    except OSError as exc:
        raise MddoseError(f"cannot read directory ({exc.strerror or exc})", directory) from None


def reader_patient_id(folder: str | os.PathLike, stored: object = None, source: str | os.PathLike | None = None
                      ) -> str:
    """The id of the patient in ``folder``: ``stored`` (read from the user file ``source``) if not None,
    else the folder's name; an unsafe value becomes :func:`~mddose.data.patient.safe_id` of it (if that
    is empty: of the folder's name, then ``"patient"``), logged once as a warning naming ``source``."""
    folder = Path(folder)
    raw = folder.name if stored is None else str(stored)
    if is_safe_id(raw):
        return raw
    new = safe_id(raw) or safe_id(folder.name) or "patient"
    where = source if stored is not None and source is not None else folder
    what = "id" if stored is not None else "folder name"
    log_once(f"unsafe-id:{where}:{raw!r}", f"{os.fspath(where)}: patient {what} {raw!r} is not a safe file "
             f"name; using {new!r}", logging.WARNING)
    return new
