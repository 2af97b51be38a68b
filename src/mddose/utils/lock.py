"""One writer per output: an exclusive lock held for a command's whole run, and the own-input rule.

* :func:`output_lock` — hold ``<parent>/.<name>.mddose-lock`` while writing ``<parent>/<name>``.
* :func:`check_not_own_input` — refuse an output that is one of the command's inputs, inside one, or contains one.

The lock file sits *beside* the output (not inside it): it can be taken before the output exists, it never
ends up in the output's contents, and it survives the output being replaced by :func:`mddose.utils.fs.atomic_dir`
(a rename of the whole folder). It is created atomically (``O_CREAT | O_EXCL``) and holds JSON
``{"host", "pid", "command", "started", "token"}``. A second writer gets one :class:`MddoseError` line naming the
holder. A lock left by a process that is no longer running on this host is stale: it is taken over (renamed
away atomically, so that of two runs taking it over at once only one succeeds) with one WARNING line. A lock
of another host is never taken over (its PID cannot be checked): the user removes it. The lock is removed
when the run ends, only if it is still this run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Iterator

from mddose.errors import MddoseError
from mddose.utils.fs import _host, _pid_running

#: Suffix of a lock file: ``.<name>.mddose-lock`` beside the output ``<name>``.
LOCK_SUFFIX = ".mddose-lock"


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of output ``out`` (a folder or a file, existing or not)."""
    p = Path(os.path.abspath(out))
    return p.with_name(f".{p.name}{LOCK_SUFFIX}")


def _command() -> str:
    """``mddose <sub-command>`` of this process, for the lock record."""
    words = [w for w in sys.argv[1:3] if not w.startswith("-")]
    if words[1:] and words[0] != "data":
        words = words[:1]
    return " ".join(["mddose", *words])


def _read(path: Path) -> dict | None:
    """The lock record at ``path``; ``None`` if there is none; ``{}`` if it cannot be parsed (being written)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        rec = json.loads(text)
    except ValueError:
        return {}
    return rec if isinstance(rec, dict) else {}


def _is_stale(rec: dict) -> bool:
    """Whether lock record ``rec`` was left by a process of this host that is no longer running."""
    try:
        pid = int(rec.get("pid", 0))
    except (TypeError, ValueError):
        return False
    return rec.get("host") == _host() and pid != os.getpid() and not _pid_running(pid)


def _held_error(out: Path, lock: Path, rec: dict) -> MddoseError:
    since = rec.get("started")
    since = time.strftime("%H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return MddoseError(f"another mddose run holds it (pid {rec.get('pid', '?')} on host {rec.get('host', '?')}, "
                       f"'{rec.get('command', 'mddose')}', since {since}); wait for it or remove {lock} if that "
                       f"run is gone", out)


def _take_over(lock: Path, rec: dict) -> bool:
    """Move the stale lock ``rec`` at ``lock`` away; whether it was that stale lock (and not a new one)."""
    from mddose.utils.log import logger

    aside = lock.with_name(f"{lock.name}.stale-{_host()}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(lock, aside)                 # atomic: of two runs taking it over at once, one gets it
    except FileNotFoundError:
        return False
    moved = _read(aside)
    if moved != rec:                           # another run replaced it meanwhile: put its live lock back
        with contextlib.suppress(OSError):
            os.link(aside, lock)               # never over a lock created since
        with contextlib.suppress(OSError):
            os.unlink(aside)
        return False
    os.unlink(aside)
    logger.warning("%s: took over the stale lock of pid %s ('%s'), no longer running on this host",
                   lock, rec.get("pid"), rec.get("command", "mddose"))
    return True


def acquire(out: str | os.PathLike, command: str | None = None) -> tuple[Path, str]:
    """Take the lock of ``out``; returns ``(lock file, token)``. Raises :class:`MddoseError` if it is held."""
    out = Path(out)
    lock = lock_path(out)
    lock.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    rec = {"host": _host(), "pid": os.getpid(), "command": command or _command(), "started": time.time(),
           "token": token}
    data = json.dumps(rec).encode()
    for attempt in range(50):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            held = _read(lock)
            if held is None:
                continue                       # released meanwhile: try again
            if held == {}:                     # being written by its creator
                time.sleep(0.05)
                if attempt < 40:
                    continue
                raise MddoseError(f"locked by an unreadable lock file; remove {lock} if no mddose run writes "
                                  f"there", out) from None
            if _is_stale(held):
                _take_over(lock, held)
                continue
            raise _held_error(out, lock, held) from None
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return lock, token
    raise MddoseError(f"could not take the lock {lock} (other runs keep taking it)", out)


def release(lock: Path, token: str) -> None:
    """Remove ``lock`` if it is still the one with ``token`` (never another run's)."""
    rec = _read(lock)
    if rec and rec.get("token") == token:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of output ``out`` (a folder or a file) for the ``with`` block; yields the lock
    file. A second writer of the same output gets one :class:`MddoseError` line naming the holder. Folders
    created to hold the lock file are removed again if the run left them empty."""
    parent = lock_path(out).parent
    made = [d for d in (parent, *parent.parents) if not d.exists()]   # folders the lock creates
    lock, token = acquire(out, command)
    try:
        yield lock
    finally:
        release(lock, token)
        for d in made:                         # the run wrote nothing there: leave no empty folder behind
            try:
                d.rmdir()
            except OSError:
                break


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_not_own_input(out: str | os.PathLike, *inputs: str | os.PathLike | None,
                        out_name: str = "output", input_name: str = "input") -> None:
    """Refuse ``out`` if it is one of ``inputs``, inside one, or contains one (resolved paths; ``None``
    inputs ignored) — before anything is touched, whatever ``--force`` says."""
    o = Path(out).resolve()
    for inp in inputs:
        if inp is None:
            continue
        i = Path(inp).resolve()
        if o == i:
            why = f"is the {input_name} {inp} itself"
        elif _inside(o, i):
            why = f"is inside the {input_name} {inp}"
        elif _inside(i, o):
            why = f"contains the {input_name} {inp}"
        else:
            continue
        raise MddoseError(f"the {out_name} {why}; choose another {out_name} (refused even with --force)", out)
