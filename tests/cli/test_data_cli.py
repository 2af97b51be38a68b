"""``mddose data inspect|convert|phantom`` and ``mddose bench io``."""

from __future__ import annotations

import json
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
        save_patient(tiny_patient(seed=i), root / f"pt_{i}", "openkbp")
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
    assert main(["data", "inspect", str(collection), "--json"]) == 0
    captured = capsys.readouterr()
    infos = json.loads(captured.out)
    assert isinstance(infos, list) and len(infos) == 2
    assert "pt_2" in caplog.text and "line 2" in caplog.text  # logged (stderr outside pytest)


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
    assert main(["data", "convert", str(collection), str(dst), "--to", "nifti"]) == 0
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
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_phantom_command(tmp_path, capsys):
    pytest.importorskip("mddose.data.phantom")
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
    pytest.importorskip("mddose.data.dicom")
    src = openkbp_dir / "validation-pats" / "pt_203"
    dcm = tmp_path / "dcm"
    assert main(["data", "convert", str(src), str(dcm), "--to", "dicom"]) == 0
    a, b = load_patient(src, cache=False), load_patient(dcm, cache=False)
    assert b.shape == a.shape and b.spacing == pytest.approx(a.spacing)
    np.testing.assert_array_equal(b.ct, a.ct)
    np.testing.assert_allclose(b.dose, a.dose, atol=1e-3)
    assert b.masks["PTV70"].sum() == a.masks["PTV70"].sum()
