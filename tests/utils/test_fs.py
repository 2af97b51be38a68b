"""Atomic writes: complete-or-nothing, no silent overwrite, normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from mddose.errors import MddoseError
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
