"""Format detection, loading collections with bad patients, atomic saving, the parsed-patient cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from mddose.data import cache, io
from mddose.data.formats import openkbp
from mddose.data.inspection import find_problems
from mddose.data.io import detect_format, load_patient, load_patients, save_patient
from mddose.errors import MddoseError
from tests.data.test_openkbp import tiny_patient


@pytest.fixture
def collection(tmp_path) -> Path:
    """pt_1, pt_2, pt_10 (good, OpenKBP/NIfTI) and pt_3 (broken) in one directory."""
    root = tmp_path / "pats"
    for i in (1, 2, 10):
        save_patient(tiny_patient(seed=i, id=f"pt_{i}"), root / f"pt_{i}", "nifti" if i == 2 else "openkbp")
    save_patient(tiny_patient(seed=3, id="pt_3"), root / "pt_3", "openkbp")
    (root / "pt_3" / "voxel_dimensions.csv").unlink()
    return root


def test_detect_format(tmp_path):
    save_patient(tiny_patient(), tmp_path / "a", "openkbp")
    save_patient(tiny_patient(), tmp_path / "b", "nifti")
    (tmp_path / "c").mkdir()
    assert detect_format(tmp_path / "a") == "openkbp"
    assert detect_format(tmp_path / "b") == "nifti"
    with pytest.raises(MddoseError, match="not a patient directory"):
        detect_format(tmp_path / "c")
    with pytest.raises(MddoseError, match="no such"):
        detect_format(tmp_path / "missing")


def test_unknown_format(tmp_path):
    with pytest.raises(MddoseError, match="unknown patient format"):
        save_patient(tiny_patient(), tmp_path / "x", "nrrd")
    with pytest.raises(MddoseError, match="unknown patient format"):
        load_patient(tmp_path, "nrrd")
    assert not (tmp_path / "x").exists()


def test_load_patients_reports_bad_and_loads_rest(collection, caplog):
    with caplog.at_level(logging.WARNING, logger="mddose"):
        patients, bad = load_patients(collection, progress=True)
    assert [p.meta["source"].split("/")[-1] for p in patients] == ["pt_1", "pt_2", "pt_10"]
    assert len(bad) == 1 and bad[0][0].endswith("pt_3") and "voxel_dimensions.csv" in bad[0][1]
    assert "pt_3" in caplog.text


def test_load_patients_single_dir(collection):
    patients, bad = load_patients(collection / "pt_10")
    assert len(patients) == 1 and not bad


def test_load_patients_nested_real(openkbp_dir):
    patients, bad = load_patients(openkbp_dir / "validation-pats")
    assert not bad and [p.id for p in patients][:2] == ["pt_201", "pt_202"] and len(patients) == 8
    assert all(p.shape == (128, 128, 128) for p in patients)


def test_save_refuses_existing_then_force(tmp_path):
    p = tiny_patient()
    out = save_patient(p, tmp_path / "p", "openkbp")
    (out / "marker").write_text("user data")
    with pytest.raises(MddoseError, match="already exists"):
        save_patient(p, out, "openkbp")
    assert (out / "marker").exists()
    save_patient(p.with_dose(None), out, "openkbp", force=True)
    assert not (out / "marker").exists() and not (out / "dose.csv").exists()


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    def boom(patient, d):
        (Path(d) / "ct.csv").write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr(openkbp, "write_openkbp_patient", boom)
    with pytest.raises(MddoseError, match=r"/p: cannot write the patient \(disk full\)"):
        save_patient(tiny_patient(), tmp_path / "p", "openkbp")
    assert list(tmp_path.iterdir()) == []


def test_find_problems():
    p = tiny_patient()
    p.prescriptions = {"PTV": 60.0, "Body": 50.0}  # two overlapping "targets"
    p.dose[~p.possible_dose_mask] = 1.0
    problems = " | ".join(find_problems(p))
    assert "'Empty' is empty" in problems
    assert "overlap" in problems
    assert "outside the possible-dose mask" in problems
    clean = tiny_patient()
    clean.masks.pop("Empty")
    clean.possible_dose_mask[:] = True
    assert find_problems(clean) == []


# ------------------------------------------------------------------------------------- cache
def test_cache_hit_avoids_parsing(pt_dir, monkeypatch):
    a = load_patient(pt_dir)
    entry = cache.entry_dir(pt_dir, "openkbp")
    assert (entry / "patient.json").is_file()
    assert not [p for p in entry.parent.iterdir() if p.name.endswith(".tmp")]

    def no_parse(*args, **kwargs):
        raise AssertionError("CSV parsed despite a cache hit")

    monkeypatch.setattr(openkbp, "read_sparse_csv_fast", no_parse)
    monkeypatch.setattr(openkbp, "read_sparse_csv_ref", no_parse)
    b = load_patient(pt_dir)
    for name in ("ct", "dose", "possible_dose_mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert list(a.masks) == list(b.masks) and all(np.array_equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert (b.id, b.spacing, b.prescriptions) == (a.id, a.spacing, a.prescriptions)
    b.ct[0, 0, 0] = 1234.0  # copy-on-write: the cache is not modified
    assert load_patient(pt_dir).ct[0, 0, 0] == a.ct[0, 0, 0]


@pytest.fixture
def pt_dir(tmp_path) -> Path:
    return save_patient(tiny_patient(seed=5), tmp_path / "pt_5", "openkbp")


def test_cache_key_changes_with_source(pt_dir):
    k1 = cache.cache_key(pt_dir, "openkbp")
    assert cache.cache_key(pt_dir, "openkbp") == k1
    st = (pt_dir / "ct.csv").stat()
    os.utime(pt_dir / "ct.csv", ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert cache.cache_key(pt_dir, "openkbp") != k1
    (pt_dir / "Extra.csv").write_text(",data\n")
    k3 = cache.cache_key(pt_dir, "openkbp")
    assert load_patient(pt_dir).masks["Extra"].sum() == 0 and cache.cache_key(pt_dir, "openkbp") == k3


@pytest.mark.parametrize("damage", ["truncate ct", "delete dose", "bad json", "wrong shape"])
def test_corrupt_cache_entry_is_rebuilt(pt_dir, damage, caplog):
    a = load_patient(pt_dir)
    entry = cache.entry_dir(pt_dir, "openkbp")
    if damage == "truncate ct":
        data = (entry / "ct.npy").read_bytes()
        (entry / "ct.npy").write_bytes(data[: len(data) // 2])
    elif damage == "delete dose":
        (entry / "dose.npy").unlink()
    elif damage == "bad json":
        (entry / "patient.json").write_text("{")
    else:
        np.save(entry / "ct.npy", np.zeros((2, 2, 2), np.float32))
    with caplog.at_level(logging.WARNING, logger="mddose"):
        b = load_patient(pt_dir)
    assert "corrupt cache entry" in caplog.text
    np.testing.assert_array_equal(a.ct, b.ct)
    np.testing.assert_array_equal(a.dose, b.dose)
    c = cache.read_entry(entry)  # rebuilt entry is complete
    np.testing.assert_array_equal(c.ct, a.ct)


def test_cache_off_and_nifti(tmp_path):
    d = save_patient(tiny_patient(seed=7), tmp_path / "n", "nifti")
    load_patient(d, cache=False)
    assert not cache.entry_dir(d, "nifti").exists()
    a = load_patient(d)
    assert cache.entry_dir(d, "nifti").exists()
    np.testing.assert_array_equal(load_patient(d).dose, a.dose)


def test_one_cache_root(tmp_path, monkeypatch, pt_dir):
    """Patients, slices and compiled kernels all live under mddose.utils.config.cache_root()."""
    from mddose.data.inputs.slice_cache import slices_root
    from mddose.ops.scan_cpu import cache_dir as kernels_dir
    from mddose.utils.config import cache_root

    monkeypatch.setenv("MDDOSE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert cache.entry_dir(pt_dir, "openkbp").parent == tmp_path / "c" / "patients"
    assert slices_root() == tmp_path / "c" / "slices" and kernels_dir() == tmp_path / "c" / "kernels"
    monkeypatch.delenv("MDDOSE_CACHE_DIR")
    home = Path.home() / ".cache" / "mddose"
    assert cache.entry_dir(pt_dir, "openkbp").parent == home / "patients"
    assert slices_root() == home / "slices" and kernels_dir() == home / "kernels"


def test_unwritable_cache_still_loads(pt_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache dir should be")
    monkeypatch.setenv("MDDOSE_CACHE_DIR", str(blocker))
    assert load_patient(pt_dir).id == "tiny"


def test_real_patient_through_cache(openkbp_dir, monkeypatch):
    src = openkbp_dir / "validation-pats" / "pt_202"
    a = load_patient(src, cache=False)
    load_patient(src)

    def parse(path):
        raise AssertionError(f"{path} parsed despite a cache hit")

    monkeypatch.setattr(io, "_reader", lambda fmt: parse)
    b = load_patient(src)
    np.testing.assert_array_equal(a.dose, b.dose)
    np.testing.assert_array_equal(a.ct, b.ct)
    assert list(a.masks) == list(b.masks)
