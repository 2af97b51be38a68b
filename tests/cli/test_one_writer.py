"""One writer per output folder, with real processes; and the own-input rule of ``mddose export``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mddose.cli.main import main
from mddose.predict.shipped import shipped_checkpoints
from mddose.utils.lock import lock_path

SRC = str(Path(__file__).resolve().parents[2] / "src")

#: the first writer: the real CLI, held after it took its lock until the file named by $MDDOSE_TEST_GO exists
HOLDING = """
import os, sys, time
import mddose.utils.lock as L
orig = L.acquire
def held(*a, **k):
    r = orig(*a, **k)
    t = time.time()
    while not os.path.exists(os.environ["MDDOSE_TEST_GO"]) and time.time() - t < 120:
        time.sleep(0.02)
    return r
L.acquire = held
from mddose.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _env(tmp_path) -> dict:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MDDOSE_TEST_GO=str(tmp_path / "go"), OMP_NUM_THREADS="1")
    return env


def _snapshot(root: Path) -> dict:
    """Every file (SHA-256) and folder (None) under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return shipped_checkpoints()["openkbp-small"]


@pytest.fixture
def phantoms(tmp_path) -> Path:
    assert main(["data", "phantom", "--n", "1", "--out", str(tmp_path / "ph"), "--size", "64"]) == 0
    return tmp_path / "ph"


def _args(command: str, checkpoint: Path, phantoms: Path, out: Path) -> list[str]:
    if command == "export":
        return ["export", str(checkpoint), str(out)]
    return ["data", "convert", str(phantoms), str(out), "--to", "nifti"]


@pytest.mark.parametrize("command", ["export", "data convert"])
def test_two_writers_into_one_output_one_is_refused(tmp_path, checkpoint, phantoms, command):
    out = tmp_path / "out"
    env = _env(tmp_path)
    first = subprocess.Popen([sys.executable, "-c", HOLDING, *_args(command, checkpoint, phantoms, out)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t = time.time()
        while not lock_path(out).exists():               # the first holds the lock now
            assert first.poll() is None and time.time() - t < 120, first.communicate()
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "mddose.cli.main", *_args(command, checkpoint, phantoms, out)],
                                env=env, capture_output=True, text=True, timeout=300)
        (tmp_path / "go").touch()                        # let the first finish
        out1, err1 = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    err = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(err) == 1 and "Traceback" not in second.stderr, second.stderr
    assert f"pid {first.pid} on host" in err[0] and f"mddose {command}" in err[0] and str(out) in err[0]
    assert first.returncode == 0, err1
    assert not lock_path(out).exists()
    if command == "export":
        assert main(["export", str(out), str(tmp_path / "again")]) == 0       # complete and verifiable
    else:
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in phantoms.iterdir())


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path, checkpoint):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from mddose.utils.fs import _host
    lock_path(out).write_text(json.dumps({"host": _host(), "pid": dead.pid, "command": "mddose export",
                                          "started": 0.0, "token": "t"}))
    run = subprocess.run([sys.executable, "-m", "mddose.cli.main", "export", str(checkpoint), str(out)],
                         env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "took over the stale lock" in run.stderr and str(dead.pid) in run.stderr
    assert (out / "config.json").is_file() and not lock_path(out).exists()


@pytest.mark.parametrize("src, dst", [("run/last", "run"), ("run/last", "run/last"), ("run", "run/last/x"),
                                      ("run/last", "run/last/")])
def test_export_into_its_own_input_is_refused_even_with_force(tmp_path, monkeypatch, capsys, checkpoint, src, dst):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(checkpoint, tmp_path / "run" / "last")
    shutil.copytree(checkpoint, tmp_path / "run" / "best")
    before = _snapshot(tmp_path / "run")
    assert main(["export", src, dst, "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CHECKPOINT" in err[0] and "refused even with --force" in err[0], err
    assert _snapshot(tmp_path / "run") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("case", ["predict-input", "predict-checkpoint", "convert", "train-data"])
def test_other_commands_refuse_their_own_input(tmp_path, monkeypatch, capsys, phantoms, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck").mkdir()
    (tmp_path / "cfg.json").write_text(json.dumps({"model": "md-dose", "preset": "small", "slices": {"size": 64},
                                                   "data": {"train": str(phantoms), "val": str(phantoms)}}))
    argv = {"predict-input": ["predict", "--checkpoint", "openkbp-small", "--input", "ph", "--out", "ph/pred"],
            "predict-checkpoint": ["predict", "--checkpoint", "ck", "--input", "ph", "--out", "ck"],
            "convert": ["data", "convert", "ph", "ph/nii", "--to", "nifti"],
            "train-data": ["train", "--config", "cfg.json", "--out", "ph/run"]}[case]
    before = _snapshot(tmp_path)
    assert main([*argv, "--force"] if case != "train-data" else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused even with --force" in err[0] and "Traceback" not in err[0], err
    assert _snapshot(tmp_path) == before
