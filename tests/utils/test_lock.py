"""``mddose.utils.lock``: one writer per output, the own-input rule."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from mddose.errors import MddoseError
from mddose.utils.fs import _host
from mddose.utils.lock import acquire, check_not_own_input, lock_path, output_lock, release


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(out, **rec):
    lock = lock_path(out)
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"command": "mddose predict", "started": 0.0, "token": "x", **rec}))
    return lock


def test_lock_sits_beside_the_output_and_is_removed(tmp_path):
    out = tmp_path / "sub" / "out"
    with output_lock(out, "mddose test") as lock:
        assert lock == tmp_path / "sub" / ".out.mddose-lock"
        rec = json.loads(lock.read_text())
        assert rec["host"] == _host() and rec["pid"] == os.getpid() and rec["command"] == "mddose test"
        assert not out.exists()                          # the output itself is not created
    assert not lock.exists()


def test_lock_is_released_on_error(tmp_path):
    with pytest.raises(RuntimeError), output_lock(tmp_path / "out"):
        raise RuntimeError("boom")
    assert not lock_path(tmp_path / "out").exists()


@pytest.mark.parametrize("spelling", ["out", "out/", "./out"])
def test_second_writer_is_refused_in_one_line_naming_the_holder(tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = _write_lock(tmp_path / "out", host=_host(), pid=holder.pid)
        with pytest.raises(MddoseError) as e:
            acquire(spelling)
        msg = str(e.value)
        assert "\n" not in msg and f"pid {holder.pid} on host {_host()}" in msg and "mddose predict" in msg
        assert str(lock) in msg
        assert json.loads(lock.read_text())["pid"] == holder.pid      # untouched
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = _dead_pid()
    lock = _write_lock(tmp_path / "out", host=_host(), pid=dead)
    with caplog.at_level(logging.WARNING), output_lock(tmp_path / "out"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert any("stale lock" in r.getMessage() and str(dead) in r.getMessage() for r in caplog.records)
    assert not lock.exists()
    assert [p.name for p in tmp_path.iterdir()] == []              # nothing of the stale lock left


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    lock = _write_lock(tmp_path / "out", host="some-other-host", pid=_dead_pid())
    with pytest.raises(MddoseError, match="host some-other-host"):
        acquire(tmp_path / "out")
    assert json.loads(lock.read_text())["host"] == "some-other-host"


def test_release_removes_only_our_lock(tmp_path):
    lock, token = acquire(tmp_path / "out")
    lock.write_text(json.dumps({"host": _host(), "pid": 1, "token": "someone-else"}))   # replaced by another run
    release(lock, token)
    assert lock.exists()


def test_second_acquire_in_the_same_process_is_refused(tmp_path):
    with output_lock(tmp_path / "out"), pytest.raises(MddoseError, match=f"pid {os.getpid()}"):
        acquire(tmp_path / "out")


@pytest.mark.parametrize("out, inp, why", [
    ("run", "run", "itself"),
    ("run/last", "run", "is inside"),
    ("run", "run/last", "contains"),
    ("run/last/", "./run/last", "itself"),
])
def test_own_input_is_refused(tmp_path, monkeypatch, out, inp, why):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MddoseError) as e:
        check_not_own_input(out, None, inp, out_name="OUT", input_name="CHECKPOINT")
    assert why in str(e.value) and inp in str(e.value) and str(e.value).startswith(out)


@pytest.mark.parametrize("out, inp", [("run2", "run"), ("runs/a", "runs/b"), ("a", "ab")])
def test_unrelated_output_is_accepted(tmp_path, monkeypatch, out, inp):
    monkeypatch.chdir(tmp_path)
    check_not_own_input(out, inp)


def test_folders_made_for_the_lock_are_removed_if_left_empty(tmp_path):
    with output_lock(tmp_path / "a" / "b" / "out"):
        assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a").exists()
    with output_lock(tmp_path / "c" / "out"):
        (tmp_path / "c" / "out").mkdir()
    assert (tmp_path / "c" / "out").is_dir()
