"""Atomic writes: nothing is lost if a process dies mid-write, and nothing is overwritten silently.

* :func:`atomic_write` — write one file through a temporary sibling, then ``os.replace``.
* :func:`atomic_dir` — build a whole output directory in a temporary sibling, then rename it into place.
* :func:`check_new_output` — refuse an existing output unless ``force`` is given.
* :func:`clean_stale_temps` — remove the temporary siblings a killed writer left behind.
* :func:`carry_over` — put the files of an old output that a new one lacks into the new one (hard links), so that
  a ``--force`` run replacing a folder through :func:`atomic_dir` never leaves less than there was.
* :func:`describe_error` — one line for an exception (how batch commands report a failed item).

Temporary siblings are named ``.mddose-tmp.<host>.<pid>.<name>.<random>.tmp[<suffixes>]`` so that they can be
recognised, and their owner identified, by the next run. Every atomic write cleans the directory it writes
into once per process (:func:`clean_stale_temps`): a temporary sibling is removed only when its owner is
certainly gone — its PID is not running on this host — or, when written by another host (a shared file
system, where the PID cannot be checked), when it has not been modified for :data:`FOREIGN_STALE_S` seconds.
A concurrent writer on the same host is therefore never harmed, however long it runs. The previous version
of a directory replaced by :func:`atomic_dir` (``.<name>.old-<pid>``, only left behind by a kill between its
two renames) is not a temporary: it is kept, since it can be the only complete copy (the trainer resumes
from it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

from mddose.errors import MddoseError

#: Name prefix of every temporary sibling written by this module.
TEMP_PREFIX = ".mddose-tmp."
#: A temporary sibling written by another host is stale after this many seconds without modification.
FOREIGN_STALE_S = 24 * 3600
_TEMP_RE = re.compile(r"^\.mddose-tmp\.([A-Za-z0-9_-]*)\.(\d+)\.")
_cleaned: set[tuple[int, str]] = set()


def _host() -> str:
    """This host's name as it appears in temporary names (letters, digits, ``-``, ``_``; ≤ 32 characters)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:32]


def _temp_prefix(name: str) -> str:
    """``mkstemp`` prefix of a temporary sibling of a file or directory called ``name``."""
    return f"{TEMP_PREFIX}{_host()}.{os.getpid()}.{name[:100]}."


def _pid_running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts as running)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def is_stale_temp(path: str | os.PathLike, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary sibling left by a writer that is gone (see the module docstring)."""
    path = Path(path)
    m = _TEMP_RE.match(path.name)
    if m is None:
        return False
    host, pid = m.group(1), int(m.group(2))
    if host == _host():
        return pid != os.getpid() and not _pid_running(pid)
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except OSError:
        return False
    return age > FOREIGN_STALE_S


def clean_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove the stale temporary siblings (files or directories) in ``directory``; returns what was removed.

    Never raises for an unreadable or missing directory or an entry that cannot be removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX) or not is_stale_temp(entry.path):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def _clean_once(directory: Path) -> None:
    """:func:`clean_stale_temps` the first time this process writes into ``directory``."""
    key = (os.getpid(), os.path.abspath(directory))
    if key not in _cleaned:
        _cleaned.add(key)
        clean_stale_temps(directory)


def describe_error(exc: BaseException) -> str:
    """One line describing ``exc`` for a user: a :class:`MddoseError` as it is, an ``OSError`` as
    ``"<file>: <reason>"``, anything else as ``"<ExceptionType>: <message>"``."""
    if isinstance(exc, MddoseError):
        return str(exc)
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        files = [os.fspath(f) for f in (exc.filename, exc.filename2) if f is not None]
        return f"{' -> '.join(map(str, files))}: {reason}" if files else reason
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    _clean_once(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
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
    _clean_once(path.parent)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp" + suffix, dir=path.parent)
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


def carry_over(old: str | os.PathLike, new: str | os.PathLike) -> list[str]:
    """Hard-link (copy where links are impossible) every file under folder ``old`` that folder ``new`` lacks into
    ``new``, at the same relative path; returns those paths (``/``-separated, sorted). Temporary siblings
    (:data:`TEMP_PREFIX`) and lock files (``.mddose-lock``) are left out; a missing ``old`` carries nothing.
    Linked files stay safe: every mddose write replaces a file (rename), never changes it in place."""
    old, new = Path(old), Path(new)
    kept: list[str] = []
    if not old.is_dir():
        return kept
    for root, dirs, files in os.walk(old):
        dirs[:] = sorted(d for d in dirs if not d.startswith(TEMP_PREFIX))
        for name in sorted(files):
            if name.startswith(TEMP_PREFIX) or name.endswith(".mddose-lock"):
                continue
            src = Path(root) / name
            rel = src.relative_to(old)
            dst = new / rel
            if dst.exists() or dst.is_symlink():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst, follow_symlinks=False)
            except OSError:
                shutil.copy2(src, dst, follow_symlinks=False)
            kept.append(rel.as_posix())
    return kept


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success move it to ``path``.

    If ``path`` exists and ``force`` is false, raise :class:`MddoseError` before anything is written.
    With ``force`` the old directory is replaced only after the new one is complete.
    """
    path = check_new_output(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
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
