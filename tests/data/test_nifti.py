"""NIfTI patient folders: exact round trips, LPS ⇄ RAS geometry, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from mddose.data.formats.nifti import (  # noqa: E402
    affine_from_geometry, geometry_from_affine, read_nifti_array, read_nifti_patient, write_nifti_array,
    write_nifti_patient,
)
from mddose.data.formats.openkbp import read_openkbp_patient  # noqa: E402
from mddose.errors import MddoseError  # noqa: E402
from tests.data.test_openkbp import tiny_patient  # noqa: E402


def _assert_same(p, q, exact_geometry=True):
    for name in ("ct", "dose", "possible_dose_mask"):
        a, b = getattr(p, name), getattr(q, name)
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    assert (list(p.masks) == list(q.masks)) if exact_geometry else (set(p.masks) == set(q.masks))
    for n in p.masks:
        np.testing.assert_array_equal(p.masks[n], q.masks[n])
    if exact_geometry:
        assert q.spacing == p.spacing and q.origin == p.origin
        np.testing.assert_array_equal(q.direction, p.direction)
    else:
        np.testing.assert_allclose(q.spacing, p.spacing, rtol=1e-6)
        np.testing.assert_allclose(q.origin, p.origin, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(q.direction, p.direction, atol=1e-6)


def test_synthetic_roundtrip_exact(tmp_path):
    p = tiny_patient()
    write_nifti_patient(p, tmp_path / "p")
    q = read_nifti_patient(tmp_path / "p")
    _assert_same(p, q)
    assert q.id == p.id and q.prescriptions == p.prescriptions


def test_roundtrip_without_json_to_float_precision(tmp_path):
    p = tiny_patient()
    write_nifti_patient(p, tmp_path / "p")
    (tmp_path / "p" / "patient.json").unlink()
    q = read_nifti_patient(tmp_path / "p")
    _assert_same(p, q, exact_geometry=False)
    assert q.id == "p"


def test_real_patient_roundtrip(openkbp_dir, tmp_path):
    p = read_openkbp_patient(openkbp_dir / "validation-pats" / "pt_203")
    write_nifti_patient(p, tmp_path / "pt_203")
    _assert_same(p, read_nifti_patient(tmp_path / "pt_203"))


def test_ras_affine_convention(tmp_path):
    """Identity LPS direction → NIfTI axis codes L, P, S; voxel centres map to the right RAS points."""
    p = tiny_patient()
    p.direction = np.eye(3)
    write_nifti_array(p.ct, tmp_path / "ct.nii.gz", p)
    img = nib.load(str(tmp_path / "ct.nii.gz"))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert img.shape == p.shape[::-1]
    z, y, x = 3, 5, 7
    ras = img.affine @ np.array([x, y, z, 1.0])
    lps = np.array(p.origin) + np.array([x * p.spacing[2], y * p.spacing[1], z * p.spacing[0]])
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)
    assert np.asarray(img.dataobj)[x, y, z] == p.ct[z, y, x]


def test_geometry_affine_inverse(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    spacing, origin = (2.5, 0.9, 1.3), (-12.0, 40.5, 7.25)
    s, o, d = geometry_from_affine(affine_from_geometry(spacing, origin, q))
    np.testing.assert_allclose(s, spacing)
    np.testing.assert_allclose(o, origin)
    np.testing.assert_allclose(d, q, atol=1e-12)


def test_read_nifti_array_roundtrip(tmp_path):
    p = tiny_patient()
    write_nifti_array(p.dose, tmp_path / "d.nii.gz", p)
    arr, spacing, origin, direction = read_nifti_array(tmp_path / "d.nii.gz")
    np.testing.assert_array_equal(arr, p.dose)
    np.testing.assert_allclose(spacing, p.spacing, rtol=1e-6)
    np.testing.assert_allclose(direction, p.direction, atol=1e-6)


def _break(d, what):
    p = tiny_patient()
    if what == "mask shape":
        small = tiny_patient(shape=(12, 16, 18))
        write_nifti_array(small.masks["PTV"], d / "masks" / "PTV.nii.gz", small)
        return "PTV.nii.gz", "shape"
    if what == "dose grid":
        shifted = tiny_patient()
        shifted.origin = (0.0, 0.0, 0.0)
        write_nifti_array(p.dose, d / "dose.nii.gz", shifted)
        return "dose.nii.gz", "grid"
    if what == "nan dose":
        bad = p.dose.copy()
        bad[2, 2, 2] = np.nan
        write_nifti_array(bad, d / "dose.nii.gz", p)
        return "dose.nii.gz", "NaN"
    if what == "missing ct":
        (d / "ct.nii.gz").unlink()
        return "ct.nii.gz", "missing"
    if what == "corrupt ct":
        (d / "ct.nii.gz").write_bytes(b"not gzip at all")
        return "ct.nii.gz", "can't read"
    if what == "bad json":
        (d / "patient.json").write_text("{nope")
        return "patient.json", "JSON"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["mask shape", "dose grid", "nan dose", "missing ct", "corrupt ct", "bad json"])
def test_bad_input_names_file(tmp_path, what):
    d = tmp_path / "p"
    write_nifti_patient(tiny_patient(), d)
    fname, words = _break(d, what)
    with pytest.raises(MddoseError) as info:
        read_nifti_patient(d)
    assert fname in str(info.value) and words in str(info.value)


def test_write_array_wrong_shape(tmp_path):
    p = tiny_patient()
    with pytest.raises(MddoseError, match="shape"):
        write_nifti_array(np.zeros((3, 3, 3)), tmp_path / "x.nii.gz", p)
    assert json.dumps(p.summary())  # patient untouched and still serialisable


# ------------------------------------------------------------------ voxel size (issue 20, item 3)
def _rewrite_header(path, edit) -> None:
    """Rewrite ``path`` with its raw header edited by ``edit(header)`` (bypassing nibabel's repairs on write)."""
    import gzip

    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    hdr = nib.Nifti1Header(bytes(img.header.binaryblock))
    edit(hdr)
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4 + data.astype(hdr.get_data_dtype()).tobytes(order="F"))


def _sform_x(factor):
    """The sform's first column (the voxel's x edge) times ``factor``."""
    def edit(h):
        h["qform_code"], h["sform_code"] = 0, 1
        for key in ("srow_x", "srow_y", "srow_z"):
            row = h[key].copy()
            row[0] = row[0] * factor
            h[key] = row
    return edit


def _pixdim_x(value, qform: bool):
    def edit(h):
        h["qform_code"], h["sform_code"] = int(qform), 0
        pix = h["pixdim"].copy()
        pix[1] = value
        h["pixdim"] = pix
    return edit


@pytest.mark.parametrize("edit", [
    _sform_x(0.0), _sform_x(np.nan), _sform_x(np.inf),
    _pixdim_x(0.0, True), _pixdim_x(-2.0, True), _pixdim_x(np.nan, True), _pixdim_x(np.inf, True),
    _pixdim_x(0.0, False), _pixdim_x(-2.0, False),
], ids=["sform-zero", "sform-nan", "sform-inf", "qform-pixdim-zero", "qform-pixdim-negative", "qform-pixdim-nan",
        "qform-pixdim-inf", "pixdim-zero", "pixdim-negative"])
def test_voxel_size_zero_negative_or_not_finite_is_refused(tmp_path, edit):
    """nibabel silently turns a zero pixdim into 1 mm and a negative one into its absolute value: refused instead,
    naming the file and the voxel size."""
    d = tmp_path / "p"
    write_nifti_patient(tiny_patient(), d)
    (d / "patient.json").unlink()                       # the image's own geometry is the only one
    for f in [*d.glob("*.nii.gz"), *(d / "masks").glob("*.nii.gz")]:
        _rewrite_header(f, edit)
    with pytest.raises(MddoseError, match="voxel size") as info:
        read_nifti_patient(d)
    assert "ct.nii.gz" in str(info.value) and "\n" not in str(info.value)


def test_negative_sform_axis_is_a_flip_not_a_bad_voxel_size(tmp_path):
    d = tmp_path / "p"
    write_nifti_patient(tiny_patient(), d)
    (d / "patient.json").unlink()
    for f in [*d.glob("*.nii.gz"), *(d / "masks").glob("*.nii.gz")]:
        _rewrite_header(f, _sform_x(-1.0))
    assert read_nifti_patient(d).spacing == pytest.approx(tiny_patient().spacing)
