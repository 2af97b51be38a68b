"""OpenKBP CSV reader/writer: real shared patients, orientation, round trips, prediction format, bad input."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mddose.data.formats import openkbp
from mddose.data.formats.openkbp import (
    read_dose_csv, read_openkbp_patient, read_sparse_csv_fast, read_sparse_csv_ref, write_dose_csv,
    write_openkbp_patient,
)
from mddose.data.patient import Patient
from mddose.errors import MddoseError

N = 128


def _raw_rows(path: Path) -> list[tuple[int, str]]:
    """Independent parse with the csv module: (flat index, value text) per data row."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["", "data"]
    return [(int(r[0]), r[1]) for r in rows[1:] if r]


def _to_zyx(i: int) -> tuple[int, int, int]:
    """File flat index → contract (z, y, x), from the orientation documented in openkbp.py."""
    a0, a1, a2 = np.unravel_index(i, (N, N, N))
    return (N - 1 - int(a2), int(a0), int(a1))


def _copy_patient(src: Path, dst: Path) -> Path:
    """Writable copy of a (read-only) shared patient folder."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copyfile(f, dst / f.name)
    return dst


def tiny_patient(shape=(12, 16, 20), seed=0, dose=True, id="tiny") -> Patient:
    rng = np.random.default_rng(seed)
    ct = rng.integers(-1000, 2000, size=shape).astype(np.float32)
    ct[0] = -1000.0  # air rows are not written (sparse)
    d = (rng.random(shape) * 70).astype(np.float32) if dose else None
    if d is not None:
        d[d < 10] = 0.0
    masks = {"PTV": rng.random(shape) < 0.1, "Body": rng.random(shape) < 0.6, "Empty": np.zeros(shape, bool)}
    th = 0.2
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    return Patient(id=id, ct=ct, spacing=(2.5, 1.25, 1.5), masks=masks, dose=d,
                   possible_dose_mask=rng.random(shape) < 0.8, origin=(-10.5, 3.25, 100.0),
                   direction=rot, prescriptions={"PTV": 60.0})


@pytest.fixture(scope="module")
def patient_dirs(openkbp_dir) -> list[Path]:
    return sorted(openkbp_dir.glob("*-pats/pt_*"))


@pytest.fixture(scope="module")
def pt201(openkbp_dir) -> Path:
    return openkbp_dir / "validation-pats" / "pt_201"


# ------------------------------------------------------------------------------------- real patients
@pytest.mark.parametrize("name", ["train-pats/pt_1", "train-pats/pt_13", "validation-pats/pt_201"])
def test_real_patient_matches_independent_parse(openkbp_dir, name):
    d = openkbp_dir / name
    p = read_openkbp_patient(d)
    assert p.shape == (N, N, N) and p.id == d.name
    assert p.ct.dtype == np.float32 and p.dose.dtype == np.float32
    v = [float(t) for t in (d / "voxel_dimensions.csv").read_text().split()]
    assert p.spacing == (v[2], v[0], v[1])
    assert 60 < p.dose.max() < 90 and p.dose.min() == 0
    for roi_file in d.glob("*.csv"):
        if roi_file.stem in openkbp.RESERVED:
            continue
        assert int(p.masks[roi_file.stem].sum()) == len(_raw_rows(roi_file)), roi_file.name
    rows = _raw_rows(d / "possible_dose_mask.csv")
    assert int(p.possible_dose_mask.sum()) == len(rows)
    # values at independently mapped positions
    ct_rows = _raw_rows(d / "ct.csv")
    for i, val in ct_rows[:: max(1, len(ct_rows) // 200)]:
        assert p.ct[_to_zyx(i)] == np.float32(min(max(float(val), 0.0), 4095.0) - 1000.0)
    dose_rows = _raw_rows(d / "dose.csv")
    for i, val in dose_rows[:: max(1, len(dose_rows) // 200)]:
        assert p.dose[_to_zyx(i)] == np.float32(float(val))
    assert int(np.count_nonzero(p.dose)) == sum(float(v) != 0 for _, v in dose_rows)
    assert p.targets[0] == "PTV70" and p.prescriptions["PTV70"] == 70.0


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)  # (z, y, x)


def test_orientation_anatomy_all_patients(patient_dirs):
    """z towards superior, y towards posterior, x towards the patient's left — on every shared patient."""
    assert len(patient_dirs) >= 30
    checked = {"sup": 0, "post": 0, "left": 0}
    for d in patient_dirs:
        masks = {f.stem: f for f in d.glob("*.csv") if f.stem not in openkbp.RESERVED}
        p_masks = {n: openkbp._read_sparse(f, (N, N, N), "mask", False, bool) for n, f in masks.items()}
        c = {n: _centroid(m) for n, m in p_masks.items() if m.any()}
        if "Brainstem" in c:
            for low in ("Larynx", "Esophagus"):
                if low in c:
                    assert c["Brainstem"][0] > c[low][0] + 5, (d.name, low)
                    checked["sup"] += 1
        if "SpinalCord" in c and "Mandible" in c:
            assert c["SpinalCord"][1] > c["Mandible"][1] + 5, d.name
            checked["post"] += 1
        if "LeftParotid" in c and "RightParotid" in c:
            assert c["LeftParotid"][2] > c["RightParotid"][2] + 5, d.name
            checked["left"] += 1
    assert min(checked.values()) >= 10, checked


def test_fast_and_reference_parsers_agree(pt201):
    for name, kind in [("ct.csv", "ct"), ("dose.csv", "dose"), ("PTV70.csv", "mask")]:
        i1, v1 = read_sparse_csv_fast(pt201 / name, N ** 3, kind)
        i2, v2 = read_sparse_csv_ref(pt201 / name, N ** 3, kind)
        np.testing.assert_array_equal(i1, i2)
        if kind == "mask":
            assert v1 is None and v2 is None
        else:
            np.testing.assert_array_equal(v1, v2)


# ------------------------------------------------------------------------------------- round trips
def test_real_roundtrip_bitwise(pt201, tmp_path):
    p = read_openkbp_patient(pt201)
    write_openkbp_patient(p, tmp_path / "out")
    q = read_openkbp_patient(tmp_path / "out")
    for name in ("ct", "dose", "possible_dose_mask"):
        np.testing.assert_array_equal(getattr(p, name), getattr(q, name))
    assert list(p.masks) == list(q.masks)
    for n in p.masks:
        np.testing.assert_array_equal(p.masks[n], q.masks[n])
    assert q.spacing == p.spacing and q.prescriptions == p.prescriptions and q.id == p.id
    # index-only files and voxel sizes come back byte for byte
    for f in pt201.glob("*.csv"):
        if f.stem not in ("ct", "dose"):
            assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes(), f.name


@pytest.mark.parametrize("shape", [(12, 16, 20), (8, 8, 8)])
def test_synthetic_roundtrip_exact(tmp_path, shape):
    p = tiny_patient(shape)
    write_openkbp_patient(p, tmp_path / "p")
    q = read_openkbp_patient(tmp_path / "p")
    assert q.shape == shape and q.id == "tiny" and q.prescriptions == {"PTV": 60.0}
    np.testing.assert_array_equal(q.ct, p.ct)
    np.testing.assert_array_equal(q.dose, p.dose)
    np.testing.assert_array_equal(q.possible_dose_mask, p.possible_dose_mask)
    assert set(q.masks) == set(p.masks) and all(np.array_equal(q.masks[n], p.masks[n]) for n in p.masks)
    assert q.spacing == p.spacing and q.origin == p.origin
    np.testing.assert_array_equal(q.direction, p.direction)


def test_patient_without_dose(tmp_path):
    p = tiny_patient(dose=False)
    write_openkbp_patient(p, tmp_path / "p")
    assert not (tmp_path / "p" / "dose.csv").exists()
    assert read_openkbp_patient(tmp_path / "p").dose is None


# ------------------------------------------------------------------------------------- prediction format
@pytest.mark.parametrize("variant", ["smoothed", "noisy", "shifted"])
def test_prediction_writer_reproduces_reference_files(openkbp_reference_dir, tmp_path, variant):
    """A float64 dose built from a reference file by an independent parse is written byte-identically."""
    ref = openkbp_reference_dir / f"predictions-{variant}" / "pt_201.csv"
    dose = np.zeros((N, N, N), np.float64)
    for i, val in _raw_rows(ref):
        dose[_to_zyx(i)] = float(val)
    write_dose_csv(dose, tmp_path / "pt_201.csv")
    assert (tmp_path / "pt_201.csv").read_bytes() == ref.read_bytes()


def test_prediction_float32_format_and_roundtrip(openkbp_reference_dir, tmp_path):
    ref = openkbp_reference_dir / "predictions-smoothed" / "pt_202.csv"
    d = read_dose_csv(ref)
    assert d.shape == (N, N, N) and d.dtype == np.float32
    out = write_dose_csv(d, tmp_path / "pt_202.csv")
    lines = out.read_text().splitlines()
    ref_lines = ref.read_text().splitlines()
    assert lines[0] == ",data" and len(lines) == len(ref_lines)
    assert [ln.split(",")[0] for ln in lines] == [ln.split(",")[0] for ln in ref_lines]
    assert all(re.fullmatch(r"\d+,\d[\d.e+-]*", ln) for ln in lines[1:])
    np.testing.assert_array_equal(read_dose_csv(out), d)  # float32 digits round-trip exactly


def test_prediction_aligned_with_patient_dose(openkbp_reference_dir, pt201):
    pred = read_dose_csv(openkbp_reference_dir / "predictions-smoothed" / "pt_201.csv")
    dose = read_openkbp_patient(pt201).dose
    assert np.corrcoef(pred.ravel(), dose.ravel())[0, 1] > 0.9


def test_write_dose_csv_rejects_bad_dose(tmp_path):
    d = np.zeros((4, 4, 4), np.float32)
    d[1, 1, 1] = np.nan
    with pytest.raises(MddoseError, match="NaN"):
        write_dose_csv(d, tmp_path / "x.csv")
    with pytest.raises(MddoseError, match="negative"):
        write_dose_csv(-np.ones((4, 4, 4), np.float32), tmp_path / "x.csv")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------- bad input
def _corrupt_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


BAD_CASES = {
    "missing ct": (lambda d: (d / "ct.csv").unlink(), "ct.csv", "missing"),
    "missing voxel dims": (lambda d: (d / "voxel_dimensions.csv").unlink(), "voxel_dimensions.csv", "missing"),
    "bad voxel dims": (lambda d: (d / "voxel_dimensions.csv").write_text("3.9\n-1\n2.5\n"),
                       "voxel_dimensions.csv", "positive"),
    "three fields": (lambda d: _corrupt_line(d / "ct.csv", 7, "5,6,7"), "ct.csv", "line 7"),
    "three fields first row": (lambda d: _corrupt_line(d / "dose.csv", 2, "5,6,7"), "dose.csv", "line 2"),
    "missing value": (lambda d: _corrupt_line(d / "ct.csv", 3, "532645"), "ct.csv", "line 3"),
    "bad header": (lambda d: _corrupt_line(d / "Larynx.csv", 1, ",data,more"), "Larynx.csv", "header"),
    "text index": (lambda d: _corrupt_line(d / "PTV70.csv", 3, "abc,"), "PTV70.csv", "line 3"),
    "text value": (lambda d: _corrupt_line(d / "ct.csv", 4, "532645,x"), "ct.csv", "line 4"),
    "index outside": (lambda d: _corrupt_line(d / "dose.csv", 5, f"{N ** 3},1.0"), "dose.csv", "outside"),
    "negative index": (lambda d: _corrupt_line(d / "Brainstem.csv", 2, "-3,"), "Brainstem.csv", "outside"),
    "nan dose": (lambda d: _corrupt_line(d / "dose.csv", 9, "630302,nan"), "dose.csv", "line 9"),
    "negative dose": (lambda d: _corrupt_line(d / "dose.csv", 2, "630302,-1.5"), "dose.csv", "negative"),
    "empty ct": (lambda d: (d / "ct.csv").write_text(""), "ct.csv", "header"),
    "binary ct": (lambda d: (d / "ct.csv").write_bytes(b"\xff\xfe\x00\x01" * 10), "ct.csv", ""),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_names_file(pt201, tmp_path, case):
    corrupt, fname, words = BAD_CASES[case]
    d = _copy_patient(pt201, tmp_path / "pt_201")
    corrupt(d)
    with pytest.raises(MddoseError) as info:
        read_openkbp_patient(d)
    msg = str(info.value)
    assert fname in msg and words in msg and "\n" not in msg


def test_read_dose_csv_missing_file(tmp_path):
    with pytest.raises(MddoseError, match="missing"):
        read_dose_csv(tmp_path / "pt_1.csv")
