"""Broken and hostile patients (issue 11): safe ids, corrupt DICOM, problems, batches that go on.

Each reproduction of the issue is a test here; the patients come from :mod:`tests.data.broken`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mddose.data import io
from mddose.data.formats import common
from mddose.data.formats.dicom.read import read_dicom_patient
from mddose.data.inspection import PLAUSIBLE_MAX_DOSE_GY, find_problems
from mddose.data.io import convert, load_patient, load_patients, save_patient
from mddose.data.patient import is_safe_id
from mddose.errors import MddoseError
from tests.data import broken


@pytest.fixture(autouse=True)
def _no_hang():
    """A reader blocked on a FIFO fails the test after 120 s instead of hanging the suite."""
    def expired(*_):
        raise TimeoutError("a reader blocked (FIFO?)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def dicom_good(tmp_path_factory) -> Path:
    """One good DICOM patient, copied by the tests that break it."""
    return broken.good(tmp_path_factory.mktemp("dcm"), "dicom_good", seed=1, fmt="dicom")


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


def _inside(path: Path, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


# ---------------------------------------------------------------------------------------------- ids
@pytest.mark.parametrize("kind", list(broken.UNSAFE_IDS))
@pytest.mark.parametrize("cache", [False, True])
def test_unsafe_stored_id_becomes_safe_and_stays_inside_out(tmp_path, kind, cache, caplog):
    builder, expected = broken.UNSAFE_IDS[kind]
    d = builder(tmp_path / "pats", kind)
    with caplog.at_level(logging.WARNING, logger="mddose"):
        p = load_patient(d, cache=cache)
    assert p.id == expected(tmp_path / "pats") and is_safe_id(p.id)
    out = tmp_path / "out"
    target = out / p.id                               # how predict/convert name their outputs
    assert _inside(target, out)
    save_patient(p, target, "openkbp")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out", "pats"]   # nothing escaped
    assert [x.name for x in out.iterdir()] == [p.id]
    if not cache:
        assert "is not a safe file name" in caplog.text and p.id in caplog.text


@pytest.mark.parametrize("folder, expected", [("pt 1", "pt_1"), (".hidden_pt", "_hidden_pt"), ("ok_1", "ok_1")])
def test_reader_id_from_folder_name(tmp_path, folder, expected):
    assert common.reader_patient_id(tmp_path / folder) == expected
    assert common.reader_patient_id(tmp_path / "x", stored="../y", source=tmp_path / "x" / "f.json") == "___y"


def test_dicom_folder_with_unsafe_name_gets_safe_id(dicom_good, tmp_path):
    d = Path(shutil.copytree(dicom_good, tmp_path / "Pat 1 (CT)"))
    assert read_dicom_patient(d).id == "Pat_1__CT_"


def test_save_refuses_reassigned_unsafe_id(tmp_path):
    p = broken.make_phantom(0, broken.SIZE)
    p.id = "../../escape"
    with pytest.raises(MddoseError, match="not a safe file name"):
        save_patient(p, tmp_path / "out", "nifti")
    assert list(tmp_path.iterdir()) == []


def test_duplicate_ids_are_both_refused_by_name(tmp_path, caplog):
    a, b = broken.duplicate_ids(tmp_path)
    broken.good(tmp_path, "other")
    with caplog.at_level(logging.WARNING, logger="mddose"):
        patients, bad = load_patients(tmp_path)
    assert [p.id for p in patients] == ["other"]
    assert [x[0] for x in bad] == [str(a), str(b)]
    assert str(b) in bad[0][1] and str(a) in bad[1][1] and "'duplicate'" in bad[0][1]
    kept, none_bad = load_patients(tmp_path, unique_ids=False)
    assert len(kept) == 3 and none_bad == []


# ---------------------------------------------------------------------------------------------- corrupt DICOM
@pytest.mark.parametrize("fraction", [0.9, 0.5, 0.2, 0.05, 0.01])
def test_truncated_rtstruct_is_an_error(dicom_good, tmp_path, fraction):
    d = _copy(dicom_good, tmp_path)
    raw = (d / "RTSTRUCT.dcm").read_bytes()
    (d / "RTSTRUCT.dcm").write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(MddoseError, match=r"RTSTRUCT\.dcm: .*(truncated|incomplete|malformed|not a DICOM)"):
        read_dicom_patient(d)


def test_random_bytes_rtstruct_is_an_error(tmp_path):
    d = broken.rtstruct_random(tmp_path)
    with pytest.raises(MddoseError, match=r"RTSTRUCT\.dcm: not a DICOM file"):
        read_dicom_patient(d)


@pytest.mark.parametrize("scaling, ok", [(-0.001, False), (0.0, False), ("nan", False), (None, True)])
def test_dose_grid_scaling(dicom_good, tmp_path, scaling, ok):
    d = _copy(dicom_good, tmp_path)
    ds = pydicom.dcmread(d / "RTDOSE.dcm")
    ref = float(ds.DoseGridScaling)
    if scaling is None:
        del ds.DoseGridScaling
    else:
        ds.DoseGridScaling = scaling
    ds.save_as(d / "RTDOSE.dcm")
    if ok:  # absent: pixel values are Gy
        p = read_dicom_patient(d)
        good = read_dicom_patient(dicom_good)
        np.testing.assert_allclose(p.dose * ref, good.dose, rtol=1e-4, atol=1e-6)
    else:
        with pytest.raises(MddoseError, match=r"RTDOSE\.dcm: DoseGridScaling must be a positive number"):
            read_dicom_patient(d)


def test_junk_ct_slice_names_that_file(tmp_path):
    d = broken.ct_slice_junk(tmp_path)
    with pytest.raises(MddoseError, match=r"CT\.0005\.dcm: ") as err:
        read_dicom_patient(d)
    assert "CT.0006" not in str(err.value)


def test_misplaced_ct_slice_names_that_file(dicom_good, tmp_path):
    d = _copy(dicom_good, tmp_path)
    ds = pydicom.dcmread(d / "CT.0005.dcm")
    ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [float(ds.ImagePositionPatient[2]) + 3.7]
    ds.save_as(d / "CT.0005.dcm")
    with pytest.raises(MddoseError, match=r"CT\.0005\.dcm: non-uniform CT slice spacing"):
        read_dicom_patient(d)


def test_missing_ct_slice_hint_names_ignored_file(dicom_good, tmp_path):
    d = _copy(dicom_good, tmp_path)
    (d / "CT.0005.dcm").rename(d / "slice5")            # no suffix: read, but random bytes → not DICOM
    (d / "slice5").write_bytes(broken._random_bytes(3000))
    with pytest.raises(MddoseError, match=r"CT\.0006\.dcm: .*1 slice\(s\) missing here.*slice5"):
        read_dicom_patient(d)


# ---------------------------------------------------------------------------------------------- problems
@pytest.mark.parametrize("kind", list(broken.PROBLEMS))
def test_inspect_lists_problem(tmp_path, kind):
    builder, text = broken.PROBLEMS[kind]
    p = load_patient(builder(tmp_path, kind))
    problems = find_problems(p)
    assert any(text in q for q in problems), problems
    clean = load_patient(broken.good(tmp_path, "clean"))
    assert not any(text in q for q in find_problems(clean))


def test_dose_threshold_is_strict():
    p = broken.make_phantom(2, broken.SIZE)
    p.dose = p.dose / p.dose.max() * np.float32(PLAUSIBLE_MAX_DOSE_GY)
    assert not [q for q in find_problems(p) if "plausible" in q]
    p.dose[0, 0, 0] = PLAUSIBLE_MAX_DOSE_GY + 1
    assert [q for q in find_problems(p) if "plausible" in q]


# ---------------------------------------------------------------------------------------------- batches
@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    c = broken.build_collection(tmp_path_factory.mktemp("broken") / "pats")
    yield c
    broken.remove_collection(c)


@pytest.mark.parametrize("cache", [False, True])
def test_load_patients_names_every_bad_and_loads_the_rest(collection, cache, caplog):
    with caplog.at_level(logging.WARNING, logger="mddose"):
        patients, bad = load_patients(collection.root, cache=cache)
    expected_bad = {*map(str, collection.unreadable.values()), *map(str, collection.duplicates)}
    assert {b[0] for b in bad} == expected_bad
    for kind, d in collection.unreadable.items():
        msg = dict(bad)[str(d)]
        assert str(d) in msg and broken.UNREADABLE[kind][1] in msg and "\n" not in msg, (kind, msg)
        assert sum(str(d) in r.getMessage() for r in caplog.records if "skipping" in r.getMessage()) == 1
    good = {str(d) for d in [*collection.good, *collection.problems.values(), *collection.unsafe.values()]}
    assert {p.meta["source"] for p in patients} == good


def test_unexpected_exception_is_reported_with_the_path(tmp_path, monkeypatch):
    a = broken.good(tmp_path, "a")
    broken.good(tmp_path, "b", seed=2)
    real = io._reader("openkbp")

    def flaky(path):
        if Path(path).name == "a":
            raise ZeroDivisionError("division by zero in a reader")
        return real(path)

    monkeypatch.setattr(io, "_reader", lambda fmt: flaky)
    patients, bad = load_patients(tmp_path, cache=False)
    assert [p.id for p in patients] == ["b"]
    assert bad == [(str(a), f"{a}: cannot read patient (ZeroDivisionError: division by zero in a reader)")]
    with pytest.raises(MddoseError, match="ZeroDivisionError"):
        load_patient(a, cache=False)
    written, bad = convert(tmp_path, tmp_path.parent / "conv", "nifti")
    assert [w.name for w in written] == ["b"] and bad[0][0] == str(a)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
@pytest.mark.parametrize("kind", ["bad_ct_unreadable", "bad_dir_unreadable"])
def test_permission_denied_is_one_line(tmp_path, kind):
    builder, text = broken.UNREADABLE[kind]
    d = builder(tmp_path, kind)
    try:
        with pytest.raises(MddoseError, match="permission denied") as err:
            load_patient(d)
        assert text in str(err.value)
    finally:
        d.chmod(0o755)


def test_permission_denied_simulated(tmp_path, monkeypatch):
    """The same checks as above as root: os.access / os.listdir answer "permission denied"."""
    f = broken.good(tmp_path, "f") / "ct.csv"
    d = broken.good(tmp_path, "d", seed=2)
    real_access, real_listdir = os.access, os.listdir
    monkeypatch.setattr(common.os, "access", lambda p, mode: False if Path(p) == f else real_access(p, mode))

    def listdir(p):
        if Path(p) == d:
            raise PermissionError(13, "Permission denied", str(p))
        return real_listdir(p)

    monkeypatch.setattr(common.os, "listdir", listdir)
    with pytest.raises(MddoseError, match=r"f/ct\.csv: CT file is not readable \(permission denied\)"):
        load_patient(f.parent, cache=False)
    with pytest.raises(MddoseError, match=r"/d: cannot read directory \(permission denied\)"):
        load_patient(d, cache=False)


@pytest.mark.parametrize("kind", ["bad_ct_fifo", "bad_roi_fifo", "bad_roi_broken_link", "bad_patient_broken_link"])
def test_special_files_are_one_line(tmp_path, kind):
    builder, text = broken.UNREADABLE[kind]
    d = builder(tmp_path, kind)
    with pytest.raises(MddoseError) as err:
        load_patient(d)
    assert text in str(err.value) and ("FIFO" in str(err.value) or "broken symbolic link" in str(err.value))


def test_fifo_in_dicom_folder_is_one_line(dicom_good, tmp_path):
    d = _copy(dicom_good, tmp_path)
    os.mkfifo(d / "notes")
    with pytest.raises(MddoseError, match=r"notes: file in a DICOM folder is a FIFO"):
        read_dicom_patient(d)


def test_convert_collection_writes_good_and_names_bad(collection, tmp_path):
    out = tmp_path / "out"
    written, bad = convert(collection.root, out, "nifti")
    readable = [*collection.good, *collection.problems.values(), *collection.unsafe.values(), *collection.duplicates]
    assert sorted(w.name for w in written) == sorted(d.name for d in readable)
    assert {b[0] for b in bad} == set(map(str, collection.unreadable.values()))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out"]
    ids = {json.loads((w / "patient.json").read_text())["id"] for w in written}
    assert all(is_safe_id(i) for i in ids)
