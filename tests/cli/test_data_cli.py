"""``mddose data inspect|convert|phantom`` and ``mddose bench io``."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from mddose.cli.main import main
from mddose.data.io import load_patient, save_patient
from tests.data.test_openkbp import tiny_patient


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture
def collection(tmp_path):
    root = tmp_path / "pats"
    for i in (1, 2, 3):
        save_patient(tiny_patient(seed=i, id=f"pt_{i}"), root / f"pt_{i}", "openkbp")
    (root / "pt_2" / "ct.csv").write_text(",data\n5,6,7\n")
    return root


def test_inspect_real_patient_json(openkbp_dir, capsys):
    d = openkbp_dir / "validation-pats" / "pt_201"
    assert main(["data", "inspect", str(d), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["id"] == "pt_201" and info["shape"] == [128, 128, 128] and len(info["spacing"]) == 3
    n_lines = len((d / "PTV70.csv").read_text().splitlines()) - 1
    assert info["rois"]["PTV70"]["voxels"] == n_lines
    sz, sy, sx = info["spacing"]
    assert info["rois"]["PTV70"]["cc"] == pytest.approx(n_lines * sz * sy * sx / 1000)
    assert 60 < info["dose"]["max"] < 90 and 0 < info["dose"]["mean"] < info["dose"]["max"]
    assert info["problems"] == []


def test_inspect_text_and_directory(collection, capsys, caplog):
    assert main(["data", "inspect", str(collection / "pt_1")]) == 0
    out = capsys.readouterr().out
    assert "PTV" in out and "target 60" in out and "'Empty' is empty" in out
    assert main(["data", "inspect", str(collection), "--json"]) == 2  # one patient failed
    captured = capsys.readouterr()
    infos = json.loads(captured.out)
    assert isinstance(infos, list) and [i["id"] for i in infos] == ["pt_1", "pt_3"]
    assert "pt_2" in caplog.text and "line 2" in caplog.text  # logged (stderr outside pytest)
    assert "1 of 3 patient(s) could not be read" in captured.err


def test_inspect_bad_patient_exit_2(collection, capsys):
    assert main(["data", "inspect", str(collection / "pt_2")]) == 2
    line = _one_error_line(capsys)
    assert "ct.csv" in line and "line 2" in line


def test_inspect_missing_path(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nope")]) == 2
    assert "nope" in _one_error_line(capsys)


@pytest.mark.parametrize("fmt", ["nifti", "openkbp"])
def test_convert_roundtrip_and_force(tmp_path, capsys, fmt):
    src = save_patient(tiny_patient(), tmp_path / "src", "openkbp" if fmt == "nifti" else "nifti")
    dst = tmp_path / "dst"
    assert main(["data", "convert", str(src), str(dst), "--to", fmt]) == 0
    a, b = load_patient(src, cache=False), load_patient(dst, cache=False)
    np.testing.assert_array_equal(a.ct, b.ct)
    np.testing.assert_array_equal(a.dose, b.dose)
    assert all(np.array_equal(a.masks[n], b.masks[n]) for n in a.masks)
    capsys.readouterr()
    (dst / "keep").write_text("x")
    assert main(["data", "convert", str(src), str(dst), "--to", fmt]) == 2
    assert "already exists" in _one_error_line(capsys) and (dst / "keep").exists()
    assert main(["data", "convert", str(src), str(dst), "--to", fmt, "--force"]) == 0
    assert not (dst / "keep").exists()


def test_convert_directory_with_bad_patient(collection, tmp_path, capsys, caplog):
    dst = tmp_path / "out"
    assert main(["data", "convert", str(collection), str(dst), "--to", "nifti"]) == 2  # one patient failed
    captured = capsys.readouterr()
    assert sorted(p.name for p in dst.iterdir()) == ["pt_1", "pt_3"]
    assert "pt_2" in caplog.text and "1 skipped" in captured.out


def test_convert_nothing_convertible_exit_2(collection, tmp_path, capsys):
    for name in ("pt_1", "pt_3"):
        shutil.rmtree(collection / name)
    assert main(["data", "convert", str(collection), str(tmp_path / "out"), "--to", "nifti"]) == 2
    err = capsys.readouterr().err
    assert "no patient could be converted" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_phantom_command(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["data", "phantom", "--n", "1", "--out", str(out), "--size", "64"]) == 0
    assert "wrote 1" in capsys.readouterr().out
    assert main(["data", "inspect", str(out), "--json"]) == 0
    infos = json.loads(capsys.readouterr().out)
    assert infos[0]["shape"][1:] == [64, 64] and infos[0]["dose"] is not None  # (z, 64, 64)
    assert main(["data", "phantom", "--n", "1", "--out", str(out)]) == 2
    assert "already exists" in _one_error_line(capsys)


def test_bench_io_json(collection, capsys):
    shutil.rmtree(collection / "pt_2")
    assert main(["bench", "io", "--json", "--data", str(collection), "--repeats", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["patients"] == 2 and res["csv_median_s"] > 0 and res["cache_median_s"] > 0


def test_convert_to_dicom_and_back(openkbp_dir, tmp_path, capsys):
    pytest.importorskip("pydicom")
    src = openkbp_dir / "validation-pats" / "pt_203"
    dcm = tmp_path / "dcm"
    assert main(["data", "convert", str(src), str(dcm), "--to", "dicom"]) == 0
    a, b = load_patient(src, cache=False), load_patient(dcm, cache=False)
    assert b.shape == a.shape and b.spacing == pytest.approx(a.spacing)
    np.testing.assert_array_equal(b.ct, a.ct)
    np.testing.assert_allclose(b.dose, a.dose, atol=1e-3)
    assert b.masks["PTV70"].sum() == a.masks["PTV70"].sum()


# ---------------------------------------------------------------------------------------------- broken patients
@pytest.fixture(scope="module")
def broken_collection(tmp_path_factory):
    from tests.data import broken

    c = broken.build_collection(tmp_path_factory.mktemp("broken") / "pats", problems=False)
    yield c
    broken.remove_collection(c)


def _readable(c) -> list:
    return [*c.good, *c.problems.values(), *c.unsafe.values(), *c.duplicates]


@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_batch_commands_name_each_bad_patient_once(broken_collection, tmp_path, capsys, caplog, command):
    c = broken_collection
    out = tmp_path / "out"
    argv = ["data", "inspect", str(c.root), "--json"] if command == "inspect" else \
        ["data", "convert", str(c.root), str(out), "--to", "openkbp"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and f"{len(c.unreadable)} of " in captured.err
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for d in c.unreadable.values():
        assert sum(str(d) in w for w in warnings) == 1, (d, warnings)
    if command == "inspect":
        infos = json.loads(captured.out)
        assert sorted(i["source"] for i in infos) == sorted(map(str, _readable(c)))
        dup = [i for i in infos if i["id"] == "duplicate"]
        assert len(dup) == 2 and all(any("is also the id of" in p for p in i["problems"]) for i in dup)
    else:
        assert sorted(p.name for p in out.iterdir()) == sorted(d.name for d in _readable(c))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing outside --out


def test_inspect_broken_collection_process(broken_collection, tmp_path):
    """As a user runs it: every bad patient is one stderr line, no traceback, exit status 2."""
    import os
    import subprocess
    import sys

    c = broken_collection
    env = {**os.environ, "MDDOSE_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-m", "mddose.cli.main", "data", "inspect", str(c.root)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "skipping patient" in ln]
    assert len(lines) == len(c.unreadable)
    for d in c.unreadable.values():
        assert sum(f"{d}:" in ln or f"{d}/" in ln for ln in lines) == 1
    for d in c.good:
        assert f"patient {d.name} " in res.stdout
