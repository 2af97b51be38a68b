"""The patient contract: validation on construction, conveniences."""

from __future__ import annotations

import numpy as np
import pytest

from mddose.data.patient import MAX_ID_LENGTH, Patient, is_safe_id, prescription_map, safe_id
from mddose.errors import MddoseError


def _patient(**kw) -> Patient:
    shape = (4, 5, 6)
    base = dict(id="p", ct=np.zeros(shape), spacing=(2.0, 3.0, 4.0),
                masks={"PTV70": np.zeros(shape, bool), "Heart": np.ones(shape, bool)},
                dose=np.ones(shape), possible_dose_mask=np.ones(shape, bool))
    base.update(kw)
    return Patient(**base)


def test_valid_patient_converts_dtypes():
    p = _patient()
    assert p.ct.dtype == np.float32 and p.dose.dtype == np.float32
    assert p.shape == (4, 5, 6)
    assert p.voxel_volume_cc == pytest.approx(2 * 3 * 4 / 1000)
    assert p.targets == ["PTV70"] and p.oars == ["Heart"]
    s = p.summary()
    assert s["rois"]["Heart"] == {"voxels": 120, "cc": pytest.approx(120 * 0.024)}
    assert s["dose"]["max"] == 1.0


@pytest.mark.parametrize("kw, message", [
    (dict(ct=np.zeros((4, 5))), "3D"),
    (dict(spacing=(1.0, 0.0, 1.0)), "spacing"),
    (dict(spacing=(1.0, float("nan"), 1.0)), "spacing"),
    (dict(masks={"Heart": np.ones((4, 5, 5), bool)}), "mask 'Heart'"),
    (dict(dose=np.ones((4, 5, 5))), "dose has shape"),
    (dict(dose=np.full((4, 5, 6), np.nan)), "NaN"),
    (dict(dose=-np.ones((4, 5, 6))), "negative"),
    (dict(ct=np.full((4, 5, 6), np.inf)), "CT contains"),
    (dict(possible_dose_mask=np.ones((1, 5, 6), bool)), "possible-dose mask"),
    (dict(prescriptions={"PTV70": -1.0}), "prescription"),
])
def test_invalid_patient_raises_named_error(kw, message):
    with pytest.raises(MddoseError, match=message) as exc:
        _patient(**kw)
    assert "patient p" in str(exc.value)


def test_with_dose_shares_arrays():
    p = _patient()
    q = p.with_dose(np.zeros(p.shape), id="pred")
    assert q.id == "pred" and q.ct is p.ct and float(q.dose.max()) == 0.0


def test_prescription_map_takes_highest():
    shape = (1, 1, 3)
    masks = {"PTV70": np.array([[[1, 1, 0]]], bool), "PTV56": np.array([[[0, 1, 1]]], bool)}
    out = prescription_map(masks, {"PTV70": 70.0, "PTV56": 56.0}, shape)
    np.testing.assert_array_equal(out, [[[70, 70, 56]]])


def test_affine_maps_index_to_lps():
    p = _patient(origin=(10.0, 20.0, 30.0))
    # index (x=1, y=2, z=3) → origin + (1*4, 2*3, 3*2)
    np.testing.assert_allclose(p.affine() @ [1, 2, 3, 1], [14.0, 26.0, 36.0, 1.0])


# ---------------------------------------------------------------------------------------------- ids
@pytest.mark.parametrize("pid", ["pt_1", "PT-01.b", "a" * MAX_ID_LENGTH, "_hidden_not", "0"])
def test_safe_ids_accepted(pid):
    assert is_safe_id(pid) and _patient(id=pid).id == pid


@pytest.mark.parametrize("pid", ["", ".", "..", "../../x", "/etc/passwd", ".hidden", "a/b", "a\\b", "pt 1",
                                 "a" * (MAX_ID_LENGTH + 1), "pt\n1", "caf\u00e9", "x\x00y", 7, None])
def test_unsafe_ids_refused(pid):
    assert not is_safe_id(pid)
    with pytest.raises(MddoseError, match="not a safe file name"):
        _patient(id=pid)


def test_reassigned_unsafe_id_refused_by_validate_id():
    p = _patient()
    p.id = "../x"
    with pytest.raises(MddoseError, match="not a safe file name"):
        p.validate_id()


@pytest.mark.parametrize("raw, expected", [
    ("../../x", "___.._x"), ("/etc/passwd", "_etc_passwd"), ("pt 1", "pt_1"), (".hidden", "_hidden"),
    ("pt_1", "pt_1"), ("a" * 300, "a" * MAX_ID_LENGTH), ("", ""), ("caf\u00e9", "caf_"),
])
def test_safe_id_conversion(raw, expected):
    out = safe_id(raw)
    assert out == expected
    assert out == "" or is_safe_id(out)
