"""Atomic writes: nothing is lost if a process dies mid-write, and nothing is overwritten silently.

* :func:`atomic_write` — write one file through a temporary sibling, then ``os.replace``.
* :func:`atomic_dir` — build a whole output directory in a temporary sibling, then rename it into place.
* :func:`check_new_output` — refuse an existing output unless ``force`` is given.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from mddose.errors import MddoseError


def _umask_mode(path: str | os.PathLike, mode: int = 0o666) -> None:
    """Give a ``mkstemp`` file (created 0600) the permissions a plain ``open`` would have given."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def check_new_output(path: str | os.PathLike, force: bool = False) -> Path:
    """Return ``path`` as a Path; raise :class:`MddoseError` if it exists and ``force`` is false."""
    p = Path(path)
    if p.exists() and not force:
        raise MddoseError("output already exists (use --force to overwrite)", p)
    return p


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file next to ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save(path: str | os.PathLike, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` to write a temporary sibling file, then rename it onto ``path``.

    For libraries that insist on writing to a path themselves (nibabel, pydicom, safetensors).
    The temporary name keeps the final suffix(es) so that format detection by extension still works.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        _umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success move it to ``path``.

    If ``path`` exists and ``force`` is false, raise :class:`MddoseError` before anything is written.
    With ``force`` the old directory is replaced only after the new one is complete.
    """
    path = check_new_output(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    _umask_mode(tmp, 0o777)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
