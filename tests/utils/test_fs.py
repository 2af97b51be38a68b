"""Atomic writes: complete-or-nothing, no silent overwrite, normal permissions."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from mddose.errors import MddoseError
from mddose.utils import fs
from mddose.utils.fs import atomic_dir, atomic_save, atomic_write, check_new_output


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temp file left behind
    with atomic_write(target, "w") as fh:
        fh.write("new")
    assert target.read_text() == "new"


def test_atomic_files_get_umask_permissions(tmp_path):
    with atomic_write(tmp_path / "b.txt", "w") as fh:
        fh.write("x")
    atomic_save(tmp_path / "c.bin", lambda p: open(p, "wb").write(b"x"))
    umask = os.umask(0)
    os.umask(umask)
    for name in ("b.txt", "c.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_atomic_save_keeps_suffix_for_format_detection(tmp_path):
    seen = []
    atomic_save(tmp_path / "x.nii.gz", lambda p: (seen.append(p), open(p, "wb").close()))
    assert seen[0].endswith(".nii.gz") and (tmp_path / "x.nii.gz").exists()


def test_atomic_dir_refuses_existing_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("user data")
    with pytest.raises(MddoseError, match="already exists"):
        with atomic_dir(out):
            pass
    assert (out / "keep").read_text() == "user data"
    with atomic_dir(out, force=True) as tmp:
        (tmp / "new").write_text("1")
    assert sorted(p.name for p in out.iterdir()) == ["new"]


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "partial").write_text("1")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_check_new_output(tmp_path):
    assert check_new_output(tmp_path / "new") == tmp_path / "new"
    with pytest.raises(MddoseError, match=str(tmp_path)):
        check_new_output(tmp_path)
    assert check_new_output(tmp_path, force=True) == tmp_path


# ------------------------------------------------------------------ leftovers of a killed write (issue 11, item 1)
KILLED_WRITER = """
import os, signal, sys
from mddose.utils.fs import atomic_dir, atomic_save, atomic_write
target, how = sys.argv[1], sys.argv[2]
if how == "write":
    with atomic_write(target, "w") as fh:
        fh.write("half")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
elif how == "save":
    atomic_save(target, lambda tmp: (open(tmp, "w").write("half"), os.kill(os.getpid(), signal.SIGKILL)))
else:
    with atomic_dir(target) as tmp:
        (tmp / "partial").write_text("half")
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


@pytest.mark.parametrize("how", ["write", "save", "dir"])
def test_leftover_of_a_killed_write_is_removed_by_the_next_write(tmp_path, how):
    target = tmp_path / ("a.nii.gz" if how == "save" else "a")
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target), how], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(fs.TEMP_PREFIX) and not target.exists()  # recognisable
    with atomic_write(tmp_path / "b.txt", "w") as fh:        # the next write into that directory
        fh.write("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]


def _temp_name(host: str, pid: int, kind: str = "file") -> str:
    return f"{fs.TEMP_PREFIX}{host}.{pid}.out.csv.abc123.tmp" + (".csv" if kind == "file" else "")


@pytest.mark.parametrize("host, pid, age_s, removed", [
    ("here", "dead", 0, True),                        # this host, owner gone → removed at once
    ("here", "self", 10 * 86400, False),              # this host, owner running → kept however old
    ("here", "parent", 10 * 86400, False),
    ("other-host", 1, 60, False),                     # another host (shared file system): recent → kept
    ("other-host", 1, fs.FOREIGN_STALE_S + 60, True),  # ... untouched for a day → removed
])
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_only_temps_of_gone_writers_are_removed(tmp_path, host, pid, age_s, removed, kind):
    pid = {"dead": _dead_pid(), "self": os.getpid(), "parent": os.getppid()}.get(pid, pid)
    entry = tmp_path / _temp_name(fs._host() if host == "here" else host, pid, kind)
    entry.mkdir() if kind == "dir" else entry.write_text("x")
    if kind == "dir":
        (entry / "inner").write_text("x")
    os.utime(entry, (time.time() - age_s,) * 2)
    assert fs.is_stale_temp(entry) == removed
    assert fs.clean_stale_temps(tmp_path) == ([entry] if removed else [])
    assert entry.exists() != removed


@pytest.mark.parametrize("name", [".a.txt.x1y2z3.tmp", ".last.old-1", ".mddose-tmp", "user.tmp", ".hidden"])
def test_cleanup_leaves_other_files_alone(tmp_path, name):
    (tmp_path / name).write_text("user data")
    os.utime(tmp_path / name, (0, 0))
    assert fs.clean_stale_temps(tmp_path) == []
    assert (tmp_path / name).read_text() == "user data"


def test_cleanup_of_a_missing_directory_is_a_no_op(tmp_path):
    assert fs.clean_stale_temps(tmp_path / "missing") == []


@pytest.mark.parametrize("exc, line", [
    (MddoseError("bad value", "/p/x.json"), "/p/x.json: bad value"),
    (PermissionError(13, "Permission denied", "/p/ct.csv"), "/p/ct.csv: Permission denied"),
    (OSError(30, "Read-only file system", "/ro/a", None, "/ro/b"), "/ro/a -> /ro/b: Read-only file system"),
    (OSError("no errno"), "no errno"),
    (KeyError("Heart"), "KeyError: 'Heart'"),
    (ValueError("could not convert\nstring to float: 'abc'"), "ValueError: could not convert string to float: 'abc'"),
    (RuntimeError(), "RuntimeError"),
])
def test_describe_error_is_one_line(exc, line):
    assert fs.describe_error(exc) == line
