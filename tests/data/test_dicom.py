"""DICOM-RT round trips (CT + RTSTRUCT + RTDOSE), dose resampling, errors, pydicom's bundled RT samples.

Tolerances: CT within 0.5 HU (+1e-3 float slack) — int16 with RescaleSlope 1; masks identical (the
writer's level-0.5 marching-squares contours pass half-way between voxel centres, so the reader's
rasterisation recovers every voxel; we also require Dice >= 0.95 as the stated contract); dose within
DoseGridScaling/2 plus float32 rounding.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from mddose.data.formats.dicom.dose import DoseGrid, read_rtdose, resample_dose
from mddose.data.formats.dicom.files import is_dicom_dir
from mddose.data.formats.dicom.geometry import Grid
from mddose.data.formats.dicom.read import read_dicom_patient
from mddose.data.formats.dicom.rtstruct import fill_polygons, rasterise_rtstruct
from mddose.data.formats.dicom.write import DicomRefs, mask_contours, write_dicom_patient, write_rtdose
from mddose.data.patient import Patient
from mddose.errors import MddoseError

SHAPE = (24, 40, 48)
SPACING = (2.5, 1.5, 1.25)  # sy != sx to catch a swapped PixelSpacing
ORIGIN = (-30.0, -25.0, 100.0)


def rotation(axis, angle: float) -> np.ndarray:
    """(3, 3) proper rotation about ``axis`` by ``angle`` rad (Rodrigues)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def make_patient(direction=np.eye(3), dose: bool = True) -> Patient:
    """Synthetic patient: ellipsoid body (40 HU + noise, air -1000), sphere PTV70, cylinder cord, Gaussian dose."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING)), indexing="ij")
    cz, cy, cx = z.mean(), y.mean(), x.mean()
    body = ((z - cz) / 28) ** 2 + ((y - cy) / 26) ** 2 + ((x - cx) / 27) ** 2 <= 1
    ptv = (z - cz) ** 2 + (y - cy + 5) ** 2 + (x - cx - 4) ** 2 <= 10 ** 2
    cord = ((y - cy - 15) ** 2 + (x - cx) ** 2 <= 4 ** 2) & body
    ring = ((y - cy) ** 2 + (x - cx + 12) ** 2 <= 6 ** 2) & ((y - cy) ** 2 + (x - cx + 12) ** 2 > 3 ** 2) & body
    ct = np.where(body, 40.0, -1000.0) + np.random.default_rng(0).normal(0, 20, SHAPE)
    d = 70 * np.exp(-((z - cz) ** 2 + (y - cy + 5) ** 2 + (x - cx - 4) ** 2) / (2 * 15 ** 2)) * body
    return Patient("synth", ct, SPACING, {"Body": body, "PTV70": ptv, "SpinalCord": cord, "Ring": ring},
                   d if dose else None, body, ORIGIN, direction, {"PTV70": 70.0})


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


# ---------------------------------------------------------------------------------------- round trip
def test_roundtrip_geometry_and_ct(roundtrip):
    p, _, q = roundtrip
    assert q.shape == p.shape and q.id == "pt"
    np.testing.assert_allclose(q.spacing, p.spacing, atol=1e-9)
    np.testing.assert_allclose(q.origin, p.origin, atol=1e-9)
    np.testing.assert_allclose(q.direction, np.eye(3), atol=1e-12)
    assert np.abs(q.ct - p.ct).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("name", ["Body", "PTV70", "SpinalCord", "Ring"])
def test_roundtrip_masks(roundtrip, name):
    p, _, q = roundtrip
    a, b = p.masks[name], q.masks[name]
    assert dice(a, b) >= 0.95
    assert np.array_equal(a, b), f"{int((a != b).sum())} voxels differ"


def test_roundtrip_dose_pdm_prescriptions(roundtrip):
    p, d, q = roundtrip
    scaling = float(pydicom.dcmread(d / "RTDOSE.dcm").DoseGridScaling)
    assert np.abs(q.dose - p.dose).max() <= scaling / 2 + 70 * 2 ** -23
    assert np.array_equal(q.possible_dose_mask, p.possible_dose_mask)
    assert q.meta["possible_dose_mask"] == "ROI Body"
    assert q.prescriptions == {"PTV70": 70.0} and q.targets == ["PTV70"]


def test_rtdose_attributes(roundtrip):
    p, d, q = roundtrip
    ds = pydicom.dcmread(d / "RTDOSE.dcm")
    ct0 = pydicom.dcmread(d / "CT.0000.dcm")
    assert ds.Modality == "RTDOSE" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.2"
    assert ds.StudyInstanceUID == ct0.StudyInstanceUID == q.meta["dicom"]["study_instance_uid"]
    assert ds.FrameOfReferenceUID == ct0.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != ct0.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in ds.ReferencedImageSequence] == q.meta["dicom"]["sop_instance_uids"]
    assert [float(v) for v in ds.PixelSpacing] == [SPACING[1], SPACING[2]]  # (row, column)
    assert [float(v) for v in ds.ImagePositionPatient] == list(ORIGIN)
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    np.testing.assert_allclose([float(v) for v in ds.GridFrameOffsetVector], np.arange(SHAPE[0]) * SPACING[0])
    assert int(ds.NumberOfFrames) == SHAPE[0] and (ds.Rows, ds.Columns) == SHAPE[1:]
    assert ds.FrameIncrementPointer == pydicom.tag.Tag(0x3004, 0x000C)
    assert (ds.DoseUnits, ds.DoseType, ds.DoseSummationType) == ("GY", "PHYSICAL", "PLAN")
    assert ds.BitsAllocated == 32 and ds.PixelRepresentation == 0
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.481.5"
    assert 3.9e9 <= int(ds.pixel_array.max()) <= 2 ** 32 - 1
    np.testing.assert_allclose(ds.pixel_array.max() * float(ds.DoseGridScaling), p.dose.max(), rtol=1e-6)


def test_ct_and_rtstruct_references(roundtrip):
    _, d, q = roundtrip
    cts = sorted(d.glob("CT.*.dcm"))
    assert len(cts) == SHAPE[0]
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in cts]
    assert len(set(uids)) == len(uids) and uids == q.meta["dicom"]["sop_instance_uids"]
    ct0 = pydicom.dcmread(cts[0])
    assert ct0.pixel_array.dtype == np.int16 and float(ct0.RescaleIntercept) == -1024
    rs = pydicom.dcmread(d / "RTSTRUCT.dcm")
    frame = rs.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ct0.FrameOfReferenceUID
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct0.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == set(uids)
    contour = rs.ROIContourSequence[0].ContourSequence[0]
    assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID in uids
    pts = np.asarray(contour.ContourData, float).reshape(-1, 3)
    assert len(pts) == contour.NumberOfContourPoints and np.ptp(pts[:, 2]) == 0


@pytest.mark.parametrize("direction", [np.diag([-1.0, 1.0, -1.0]), rotation([1, 2, 3], 0.4)],
                         ids=["feet-first", "oblique"])
def test_roundtrip_other_orientations(tmp_path, direction):
    p = make_patient(direction, dose=False)
    write_dicom_patient(p, tmp_path / "pt")
    q = read_dicom_patient(tmp_path / "pt")
    np.testing.assert_allclose(q.direction, direction, atol=1e-9)
    np.testing.assert_allclose(q.origin, p.origin, atol=1e-6)
    assert np.abs(q.ct - p.ct).max() <= 0.5 + 1e-3
    for name in p.masks:
        assert np.array_equal(q.masks[name], p.masks[name]), name


def test_write_rtdose_references_read_patient(roundtrip, tmp_path):
    p, d, q = roundtrip
    pred = (0.9 * p.dose).astype(np.float32)
    out = write_rtdose(pred, q, tmp_path / "pred" / "RTDOSE.dcm")
    ds = pydicom.dcmread(out)
    assert ds.StudyInstanceUID == q.meta["dicom"]["study_instance_uid"]
    assert ds.FrameOfReferenceUID == q.meta["dicom"]["frame_of_reference_uid"]
    assert not list(out.parent.glob(".*"))  # no temporary file left behind
    for f in d.glob("CT.*.dcm"):  # the prediction next to the original CT reads back as the patient's dose
        shutil.copy(f, out.parent / f.name)
    r = read_dicom_patient(out.parent)
    assert np.abs(r.dose - pred).max() <= float(ds.DoseGridScaling) / 2 + 70 * 2 ** -23


def test_write_rtdose_without_dicom_meta(tmp_path):
    p = make_patient()
    ds = pydicom.dcmread(write_rtdose(p.dose, p, tmp_path / "d.dcm"))
    assert ds.FrameOfReferenceUID and "ReferencedImageSequence" not in ds
    with pytest.raises(MddoseError, match="dose shape"):
        write_rtdose(p.dose[1:], p, tmp_path / "e.dcm")


def test_write_refuses_existing_dir(tmp_path):
    p = make_patient(dose=False)
    (tmp_path / "pt").mkdir()
    write_dicom_patient(p, tmp_path / "pt")  # an empty directory is fine
    with pytest.raises(MddoseError, match="already exists"):
        write_dicom_patient(p, tmp_path / "pt")
    write_dicom_patient(p, tmp_path / "pt", force=True)
    assert len(list((tmp_path / "pt").glob("CT.*.dcm"))) == SHAPE[0]


# ---------------------------------------------------------------------------------------- dose grids
def linear_dose_patient(ct_patient: Patient, shift, spacing=(2.0, 2.2, 1.7), shape=(15, 22, 30)) -> Patient:
    """A patient on another grid (same frame of reference) with dose = a·w + b (w: LPS mm)."""
    origin = np.asarray(ct_patient.origin) + np.asarray(shift, float)
    g = Grid(shape, spacing, origin, np.eye(3))
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    w = g.index_to_world(np.column_stack([xx.ravel(), yy.ravel(), zz.ravel()]))
    dose = (w @ np.array([0.3, -0.2, 0.5]) + 60.0).reshape(shape)
    assert dose.min() > 0
    return Patient("dose", np.zeros(shape), spacing, dose=dose, origin=tuple(origin), meta=ct_patient.meta)


@pytest.fixture
def ct_only_dir(roundtrip, tmp_path):
    """A copy of the round-trip directory without its RTDOSE; returns (dir, patient read back)."""
    _, d, q = roundtrip
    out = tmp_path / "ct"
    shutil.copytree(d, out)
    (out / "RTDOSE.dcm").unlink()
    return out, q


def test_dose_on_other_grid_is_resampled_exactly(ct_only_dir):
    d, q = ct_only_dir
    dp = linear_dose_patient(q, shift=(7.3, 9.1, 11.7))
    write_rtdose(dp.dose, dp, d / "RTDOSE.dcm")
    r = read_dicom_patient(d)
    g = Grid.of(q)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in q.shape), indexing="ij")
    w = g.index_to_world(np.column_stack([xx.ravel(), yy.ravel(), zz.ravel()]))
    expected = (w @ np.array([0.3, -0.2, 0.5]) + 60.0).reshape(q.shape)
    idx = Grid(dp.shape, dp.spacing, np.asarray(dp.origin), np.eye(3)).world_to_index(w)
    hi = np.array(dp.shape[::-1]) - 1
    inside = np.all((idx > 1e-6) & (idx < hi - 1e-6), axis=1).reshape(q.shape)
    outside = np.any((idx < -1e-6) | (idx > hi + 1e-6), axis=1).reshape(q.shape)
    assert inside.sum() > 1000 and outside.sum() > 1000 and (inside | outside).all()
    scaling = float(pydicom.dcmread(d / "RTDOSE.dcm").DoseGridScaling)
    assert np.abs(r.dose[inside] - expected[inside]).max() <= scaling + 1e-4
    assert np.all(r.dose[outside] == 0)


def test_non_overlapping_dose_grid(ct_only_dir):
    d, q = ct_only_dir
    dp = linear_dose_patient(q, shift=(0.0, 0.0, 1000.0))
    write_rtdose(dp.dose, dp, d / "RTDOSE.dcm")
    with pytest.raises(MddoseError, match=r"RTDOSE\.dcm: RTDOSE grid .* does not overlap"):
        read_dicom_patient(d)


@pytest.mark.parametrize("keyword, value, message", [
    ("DoseUnits", "RELATIVE", "DoseUnits is RELATIVE"),
    ("FrameOfReferenceUID", "1.2.3", "RTDOSE frame of reference 1.2.3 differs"),
])
def test_bad_rtdose(ct_only_dir, keyword, value, message):
    d, q = ct_only_dir
    path = write_rtdose(make_patient().dose, q, d / "RTDOSE.dcm")
    ds = pydicom.dcmread(path)
    setattr(ds, keyword, value)
    ds.save_as(path)
    with pytest.raises(MddoseError, match=r"RTDOSE\.dcm: " + message):
        read_dicom_patient(d)


def test_beam_doses_are_summed(ct_only_dir):
    d, q = ct_only_dir
    p = make_patient()
    for name, frac in (("beam1.dcm", 0.25), ("beam2.dcm", 0.75)):
        path = write_rtdose(frac * p.dose, q, d / name)
        ds = pydicom.dcmread(path)
        ds.DoseSummationType = "BEAM"
        ds.save_as(path)
    r = read_dicom_patient(d)
    np.testing.assert_allclose(r.dose, p.dose, atol=1e-4)


def linear_dose_grid(direction, origin, pixel_spacing=(2.2, 1.7), offsets=np.arange(15) * 2.0,
                     shape=(22, 30)) -> DoseGrid:
    """A DoseGrid with dose = a·w + b at its voxel centres."""
    d = np.asarray(direction, float)
    kk, rr, cc = np.meshgrid(offsets, np.arange(shape[0]) * pixel_spacing[0], np.arange(shape[1]) * pixel_spacing[1],
                             indexing="ij")
    w = np.asarray(origin) + np.stack([cc, rr, kk], -1) @ d.T
    return DoseGrid(w @ np.array([0.3, -0.2, 0.5]) + 60.0, np.asarray(origin, float), d, pixel_spacing,
                    np.asarray(offsets, float), "GY", "PLAN", None, Path("dose.dcm"))


def linear_expected(grid: Grid) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    w = grid.index_to_world(np.column_stack([xx.ravel(), yy.ravel(), zz.ravel()]))
    return (w @ np.array([0.3, -0.2, 0.5]) + 60.0).reshape(grid.shape)


@pytest.mark.parametrize("offsets", [np.arange(15) * 2.0, np.r_[0, 1.5, np.arange(2, 15) * 2.0 + 1], np.arange(15) * -2.0],
                         ids=["uniform", "non-uniform", "decreasing"])
def test_resample_separable_matches_general(offsets):
    grid = Grid((12, 20, 26), (2.5, 1.5, 1.25), np.array([-10.0, -8.0, 3.0]), np.eye(3))
    dg = linear_dose_grid(np.eye(3), (-12.3, -11.1, 8.7), offsets=offsets)
    if offsets[-1] < 0:  # as read_rtdose stores them: increasing
        dg.offsets, dg.dose = dg.offsets[::-1].copy(), dg.dose[::-1].copy()
    fast, ref = resample_dose(dg, grid, method="separable"), resample_dose(dg, grid, method="general")
    assert fast.any() and (fast == 0).any()
    np.testing.assert_allclose(fast, ref, rtol=1e-6, atol=1e-5)
    inside = ref > 0
    np.testing.assert_allclose(ref[inside], linear_expected(grid)[inside], rtol=1e-6)


def test_resample_oblique_dose_grid_is_exact_for_linear_dose():
    grid = Grid((12, 20, 26), (2.5, 1.5, 1.25), np.array([-10.0, -8.0, 3.0]), np.eye(3))
    dg = linear_dose_grid(rotation([0, 0.3, 1], 0.5), (-20.0, -25.0, -1.0))
    out = resample_dose(dg, grid)  # auto → general path
    inside = out > 0
    assert inside.sum() > 500 and (~inside).sum() > 100
    np.testing.assert_allclose(out[inside], linear_expected(grid)[inside], rtol=1e-6)
    with pytest.raises(MddoseError, match="parallel"):
        resample_dose(dg, grid, method="separable")


# ---------------------------------------------------------------------------------------- contours
@pytest.mark.parametrize("seed", range(6))
def test_mask_contours_rasterise_back_exactly(seed):
    rng = np.random.default_rng(seed)
    from scipy.ndimage import binary_opening, gaussian_filter

    m = gaussian_filter(rng.normal(size=(30, 37)), 1.5) > 0.1  # blobs, holes, saddles, border contact
    if seed % 2:
        m = binary_opening(m) | (rng.random(m.shape) > 0.97)  # isolated voxels, diagonal pairs
    assert np.array_equal(fill_polygons(mask_contours(m), m.shape), m)


def circle(cx, cy, r, z, n=720):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t), np.full(n, z)]).ravel()


def test_rasterise_annulus_even_odd_matches_analytic():
    """An outer and an inner circle on each slice (a hole) against the analytic ring on voxel centres."""
    grid = Grid((5, 60, 60), (3.0, 1.0, 1.0), np.array([-30.0, -30.0, 0.0]), np.eye(3))
    ds = Dataset()
    roi = Dataset()
    roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = 1, "Ring", "1.2.3"
    ds.StructureSetROISequence = [roi]
    rc = Dataset()
    rc.ReferencedROINumber = 1
    contours = []
    for k in range(1, 4):
        for r in (20.3, 9.7):
            c = Dataset()
            c.ContourGeometricType, c.ContourData = "CLOSED_PLANAR", list(circle(0.2, -0.4, r, 3.0 * k))
            contours.append(c)
    rc.ContourSequence = contours
    ds.ROIContourSequence = [rc]
    masks, numbers, _ = rasterise_rtstruct(ds, Path("x.dcm"), grid, for_uid="1.2.3")
    yy, xx = np.mgrid[0:60, 0:60] - 30.0
    dist = np.hypot(xx - 0.2, yy + 0.4)
    ring = (dist < 20.3) & (dist > 9.7)
    clear = (np.abs(dist - 20.3) > 0.05) & (np.abs(dist - 9.7) > 0.05)
    assert numbers == {1: "Ring"}
    assert not masks["Ring"][0].any() and not masks["Ring"][4].any()
    for k in range(1, 4):
        assert np.array_equal(masks["Ring"][k][clear], ring[clear])
    with pytest.raises(MddoseError, match="x.dcm: RTSTRUCT references frame of reference"):
        rasterise_rtstruct(ds, Path("x.dcm"), grid, for_uid="9.9.9")


# ---------------------------------------------------------------------------------------- errors
def test_no_ct_series(tmp_path):
    shutil.copy(get_testdata_file("rtdose.dcm"), tmp_path / "rtdose.dcm")
    with pytest.raises(MddoseError, match="no CT series found"):
        read_dicom_patient(tmp_path)
    with pytest.raises(MddoseError, match="not a directory"):
        read_dicom_patient(tmp_path / "missing")


def test_several_series(roundtrip, tmp_path):
    p, d, q = roundtrip
    other = tmp_path / "other"
    write_dicom_patient(p.with_dose(None), other)
    both = tmp_path / "both"
    shutil.copytree(d, both)
    for f in other.glob("CT.*.dcm"):
        shutil.copy(f, both / f"B{f.name}")
    assert np.array_equal(read_dicom_patient(both).masks["PTV70"], p.masks["PTV70"])  # RTSTRUCT chooses
    (both / "RTSTRUCT.dcm").unlink()
    (both / "RTDOSE.dcm").unlink()  # in the first series' frame of reference
    with pytest.raises(MddoseError, match="2 CT series .*pass series_uid"):
        read_dicom_patient(both)
    uid = pydicom.dcmread(other / "CT.0000.dcm").SeriesInstanceUID
    r = read_dicom_patient(both, series_uid=uid)
    assert r.meta["dicom"]["series_instance_uid"] == uid


def test_non_uniform_spacing(roundtrip, tmp_path):
    _, d, _ = roundtrip
    out = tmp_path / "pt"
    shutil.copytree(d, out)
    f = out / "CT.0010.dcm"
    ds = pydicom.dcmread(f)
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 1.0
    ds.save_as(f)
    with pytest.raises(MddoseError, match=r"CT\.001[01]\.dcm: non-uniform CT slice spacing"):
        read_dicom_patient(out)


def test_rtstruct_in_other_frame_of_reference(roundtrip, tmp_path):
    _, d, _ = roundtrip
    out = tmp_path / "pt"
    shutil.copytree(d, out)
    ds = pydicom.dcmread(out / "RTSTRUCT.dcm")
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4"
    for roi in ds.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = "1.2.3.4"
    ds.save_as(out / "RTSTRUCT.dcm")
    with pytest.raises(MddoseError, match=r"RTSTRUCT\.dcm: RTSTRUCT references frame of reference 1\.2\.3\.4"):
        read_dicom_patient(out)


def test_is_dicom_dir(roundtrip, tmp_path):
    _, d, _ = roundtrip
    assert is_dicom_dir(d)
    assert not is_dicom_dir(d.parent) and is_dicom_dir(d.parent, recursive=True)
    (tmp_path / "notes.txt").write_text("hello")
    assert not is_dicom_dir(tmp_path) and not is_dicom_dir(tmp_path / "missing")


# ---------------------------------------------------------------------------------------- bundled samples
def test_bundled_ct_small(tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "CT_small.dcm")
    ref = pydicom.dcmread(tmp_path / "CT_small.dcm")
    p = read_dicom_patient(tmp_path)
    assert p.shape == (1, 128, 128) and p.dose is None and not p.masks
    np.testing.assert_allclose(p.spacing, (float(ref.SliceThickness), *map(float, ref.PixelSpacing)))
    np.testing.assert_allclose(p.origin, [float(v) for v in ref.ImagePositionPatient])
    np.testing.assert_array_equal(p.ct[0], ref.pixel_array * float(ref.RescaleSlope) + float(ref.RescaleIntercept))
    assert np.array_equal(p.possible_dose_mask, p.ct > -500) and p.meta["possible_dose_mask"] == "CT > -500 HU"


def test_bundled_ct_with_foreign_rtstruct(tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "CT_small.dcm")
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "rtstruct.dcm")
    with pytest.raises(MddoseError, match="rtstruct.dcm: RTSTRUCT references frame of reference"):
        read_dicom_patient(tmp_path)


def test_bundled_rtstruct_rasterises():
    ds = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    grid = Grid((5, 50, 50), (10.0, 10.0, 10.0), np.array([-245.0, -245.0, -200.0]), np.eye(3))
    masks, numbers, _ = rasterise_rtstruct(ds, Path("rtstruct.dcm"), grid)
    assert sorted(numbers.values()) == ["Body", "Isocenter 1", "Isocenter 2"]  # "patient" → Body
    assert masks["Body"].any() and not masks["Isocenter 1"].any()  # POINT contours are ignored


def test_bundled_rtdose_through_reader():
    path = get_testdata_file("rtdose.dcm")
    ref = pydicom.dcmread(path)
    dg = read_rtdose(path)
    assert dg.dose.shape == (15, 10, 10) and dg.units == "RELATIVE" and dg.summation == "BEAM"
    np.testing.assert_allclose(dg.offsets, np.arange(15) * 5.0)
    np.testing.assert_allclose(dg.dose, ref.pixel_array * float(ref.DoseGridScaling))
    own = Grid((15, 10, 10), (5.0, *dg.pixel_spacing), dg.origin, np.eye(3))
    np.testing.assert_allclose(resample_dose(dg, own), dg.dose, rtol=1e-6)
    half = Grid((29, 10, 10), (2.5, *dg.pixel_spacing), dg.origin, np.eye(3))
    mid = resample_dose(dg, half)[1::2]
    np.testing.assert_allclose(mid, (dg.dose[:-1] + dg.dose[1:]) / 2, rtol=1e-5)


def test_dicom_refs_new_uids():
    p = make_patient(dose=False)
    a, b = DicomRefs.from_patient(p, new_ct=True), DicomRefs.from_patient(p, new_ct=True)
    assert a.study_uid != b.study_uid and len(set(a.ct_sop_uids)) == SHAPE[0]


# ---------------------------------------------------------------------------------------- integration
def test_save_and_load_through_io(tmp_path):
    from mddose.data.io import detect_format, load_patient, save_patient

    p = make_patient()
    save_patient(p, tmp_path / "pt", "dicom")
    assert detect_format(tmp_path / "pt") == "dicom"
    q = load_patient(tmp_path / "pt", cache=False)
    assert all(np.array_equal(q.masks[n], p.masks[n]) for n in p.masks) and q.dose is not None


def test_openkbp_patient_roundtrip(openkbp_dir, tmp_path):
    from mddose.data.formats.openkbp import read_openkbp_patient

    pdir = sorted((openkbp_dir / "train-pats").iterdir(), key=lambda d: d.name)[0]
    p = read_openkbp_patient(pdir)
    write_dicom_patient(p, tmp_path / "pt")
    q = read_dicom_patient(tmp_path / "pt")
    assert np.abs(q.ct - p.ct).max() <= 0.5 + 1e-3
    assert {n: int((q.masks[n] != p.masks[n]).sum()) for n in p.masks} == {n: 0 for n in p.masks}
    assert np.array_equal(q.possible_dose_mask, p.possible_dose_mask)
    assert np.abs(q.dose - p.dose).max() <= float(pydicom.dcmread(tmp_path / "pt" / "RTDOSE.dcm").DoseGridScaling)
    assert q.prescriptions == {t: p.prescriptions[t] for t in p.targets}
