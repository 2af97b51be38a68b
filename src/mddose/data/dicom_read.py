"""Read a DICOM-RT patient (CT series + RTSTRUCT + optional RTDOSE/RTPLAN) into a :class:`Patient`.

Conventions (see also :mod:`mddose.data.patient`):

* **Geometry.** The CT slices of one series are sorted by their ImagePositionPatient projected on the
  slice normal ``n = r × c`` (``r``, ``c`` = the row and column direction cosines of
  ImageOrientationPatient). Arrays are ``(z, y, x)`` = (slice, row, column); ``spacing`` is
  ``(slice spacing, PixelSpacing[0] (between rows), PixelSpacing[1] (between columns))``;
  ``origin`` is the IPP of the first slice; ``direction`` has columns ``r``, ``c``, ``n``. For a
  standard axial head-first-supine series (IOP ``[1,0,0, 0,1,0]``) this is the identity and the first
  slice is the most inferior one. Other orientations (feet first, prone, sagittal, ...) are **not**
  resampled or flipped: their direction is stored as read (so ``z`` then runs along ``n``, which may
  not be superior). Gantry-tilted (sheared) series are refused.
* **RTSTRUCT.** Each CLOSED_PLANAR contour is assigned to the nearest CT slice and rasterised on the
  voxel centres by an even–odd scanline fill (:func:`fill_polygons`, all contours of one ROI on one
  slice together), so holes drawn as separate contours are handled. POINT and OPEN contours
  are ignored. Names are mapped with :mod:`mddose.data.roi_names`.
* **RTDOSE.** Pixel values × DoseGridScaling (Gy); frames at IPP + GridFrameOffsetVector·n (relative
  offsets; a non-zero first element is read as absolute positions, as the standard allows). The dose
  is resampled onto the CT voxel centres by trilinear interpolation; CT voxels outside the dose grid
  get 0. Several RTDOSE files: the single one with DoseSummationType PLAN is used, else BEAM doses are
  summed.
* **Possible-dose mask.** An ROI named ``PossibleDoseMask`` (written by mddose) if present, else the
  body outline (``Body``/``External``/... or the ROI with RTROIInterpretedType EXTERNAL), else
  ``CT > -500 HU``.
* **Prescriptions.** From target names (``PTV70`` → 70 Gy); an RTPLAN's DoseReferenceSequence
  (TARGET with ReferencedROINumber and TargetPrescriptionDose) overrides them: ReferencedROINumber →
  the RTSTRUCT's ROI (its mddose name) → prescription. mddose writes such a plan with every patient
  that has a dose or prescribed targets, so a target named ``PTV`` keeps its prescription.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from mddose.data.patient import Patient
from mddose.data.roi_names import BODY, POSSIBLE_DOSE_ROI, map_roi_name, prescription_from_name
from mddose.errors import MddoseError
from mddose.utils.log import logger

#: Threshold (HU) of the fallback possible-dose mask when there is no body outline.
BODY_HU_THRESHOLD = -500.0
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


# ---------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Grid:
    """A regular voxel grid: ``shape`` (Z, Y, X), ``spacing`` (sz, sy, sx) mm, ``origin`` LPS (3,),
    ``direction`` (3, 3) with columns = LPS directions of the x, y, z index axes."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray

    @classmethod
    def of(cls, patient: Patient) -> "Grid":
        """The grid of ``patient``."""
        return cls(patient.shape, patient.spacing, np.asarray(patient.origin, float), patient.direction)

    @property
    def matrix(self) -> np.ndarray:
        """(3, 3): index (x, y, z) → LPS offset from the origin."""
        sz, sy, sx = self.spacing
        return np.asarray(self.direction, float) @ np.diag([sx, sy, sz])

    def index_to_world(self, idx: np.ndarray) -> np.ndarray:
        """idx: (N, 3) continuous (x, y, z) indices → (N, 3) LPS mm."""
        return np.asarray(idx, float) @ self.matrix.T + self.origin

    def world_to_index(self, pts: np.ndarray) -> np.ndarray:
        """pts: (N, 3) LPS mm → (N, 3) continuous (x, y, z) indices."""
        return np.linalg.solve(self.matrix, (np.asarray(pts, float) - self.origin).T).T

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """LPS bounding box (min (3,), max (3,)) of the voxel centres."""
        z, y, x = self.shape
        corners = np.array([[i, j, k] for i in (0, x - 1) for j in (0, y - 1) for k in (0, z - 1)], float)
        w = self.index_to_world(corners)
        return w.min(0), w.max(0)


def _orientation(ds, path: Path) -> np.ndarray:
    """(3, 3) columns r, c, n from ImageOrientationPatient."""
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], float)
    except (AttributeError, TypeError, ValueError):
        raise MddoseError("no valid ImageOrientationPatient", path) from None
    if iop.shape != (6,):
        raise MddoseError(f"ImageOrientationPatient must have 6 values, got {iop.size}", path)
    r, c = iop[:3], iop[3:]
    if abs(np.linalg.norm(r) - 1) > 1e-3 or abs(np.linalg.norm(c) - 1) > 1e-3 or abs(r @ c) > 1e-3:
        raise MddoseError(f"ImageOrientationPatient {list(iop)} is not two orthonormal vectors", path)
    r, c = r / np.linalg.norm(r), c / np.linalg.norm(c)
    return np.stack([r, c, np.cross(r, c)], axis=1)


def _floats(ds, keyword: str, n: int, path: Path) -> np.ndarray:
    try:
        v = np.asarray([float(x) for x in getattr(ds, keyword)], float)
    except (AttributeError, TypeError, ValueError):
        raise MddoseError(f"missing or invalid {keyword}", path) from None
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise MddoseError(f"{keyword} must be {n} finite numbers", path)
    return v


# ---------------------------------------------------------------------------------------- files
def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_dir(path: str | os.PathLike, recursive: bool = False) -> bool:
    """True if directory ``path`` directly holds a DICOM file (``DICM`` magic or a .dcm/.dicom/.ima name).

    With ``recursive`` sub-directories are searched too (a directory of patient directories would then
    count as one DICOM directory, which is why it is off by default).
    """
    p = Path(path)
    if not p.is_dir():
        return False
    files = p.rglob("*") if recursive else p.iterdir()
    return any(f.is_file() and not f.name.startswith(".") and _is_dicom_file(f) for f in files)


def _read(path: Path, headers_only: bool):
    """pydicom Dataset of ``path``, or None if it is not DICOM. Raises MddoseError for a broken .dcm file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=headers_only)
    except InvalidDicomError:
        if path.suffix.lower() not in _DICOM_SUFFIXES:
            return None
        try:  # files written without the 128-byte preamble / file meta
            ds = pydicom.dcmread(path, stop_before_pixels=headers_only, force=True)
        except Exception as exc:  # noqa: BLE001 - anything pydicom raises means "unreadable"
            raise MddoseError(f"unreadable DICOM file ({exc.__class__.__name__}: {exc})", path) from None
        return ds if "SOPClassUID" in ds or "Modality" in ds else None
    except Exception as exc:  # noqa: BLE001
        if path.suffix.lower() in _DICOM_SUFFIXES:
            raise MddoseError(f"unreadable DICOM file ({exc.__class__.__name__}: {exc})", path) from None
        return None


def _scan(directory: Path) -> dict[str, list[tuple[Path, object]]]:
    """Modality → [(path, header dataset)] for every DICOM file under ``directory`` (recursive)."""
    found: dict[str, list[tuple[Path, object]]] = {}
    for f in sorted(directory.rglob("*")):
        if not f.is_file() or f.name.startswith(".") or f.name.upper() == "DICOMDIR":
            continue
        ds = _read(f, headers_only=True)
        if ds is not None:
            found.setdefault(str(ds.get("Modality", "")).upper(), []).append((f, ds))
    return found


# ---------------------------------------------------------------------------------------- CT
def _choose_series(cts: list[tuple[Path, object]], directory: Path, series_uid: str | None,
                   structs: list[tuple[Path, object]]) -> list[tuple[Path, object]]:
    series: dict[str, list] = {}
    for item in cts:
        series.setdefault(str(item[1].get("SeriesInstanceUID", "")), []).append(item)
    if series_uid is not None:
        if series_uid not in series:
            raise MddoseError(f"no CT series with SeriesInstanceUID {series_uid}", directory)
        return series[series_uid]
    if len(series) == 1:
        return next(iter(series.values()))
    referenced = {str(s.SeriesInstanceUID) for _, ds in structs
                  for fr in ds.get("ReferencedFrameOfReferenceSequence", [])
                  for st in fr.get("RTReferencedStudySequence", [])
                  for s in st.get("RTReferencedSeriesSequence", []) if "SeriesInstanceUID" in s}
    chosen = [uid for uid in series if uid in referenced]
    if len(chosen) == 1:
        return series[chosen[0]]
    uids = ", ".join(f"{u} ({len(v)} slices)" for u, v in series.items())
    raise MddoseError(f"{len(series)} CT series and no RTSTRUCT choosing one: {uids}; pass series_uid", directory)


def read_ct_series(files: list[tuple[Path, object]]) -> tuple[np.ndarray, Grid, list[str]]:
    """Read one CT series. Returns (ct (Z, Y, X) float32 HU, grid, SOPInstanceUIDs in slice order)."""
    first_path, first = files[0]
    direction = _orientation(first, first_path)
    n = direction[:, 2]
    ps = _floats(first, "PixelSpacing", 2, first_path)
    rows, cols = int(first.Rows), int(first.Columns)
    items = []
    for path, ds in files:
        if np.abs(_orientation(ds, path) - direction).max() > 1e-4:
            raise MddoseError("ImageOrientationPatient differs from the rest of the series", path)
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols) or np.abs(_floats(ds, "PixelSpacing", 2, path) - ps).max() > 1e-4:
            raise MddoseError("image size or PixelSpacing differs from the rest of the series", path)
        ipp = _floats(ds, "ImagePositionPatient", 3, path)
        items.append((float(ipp @ n), ipp, path))
    items.sort(key=lambda t: t[0])
    pos = np.array([t[0] for t in items])
    if len(items) > 1:
        d = np.diff(pos)
        if d.min() < 1e-3:
            dup = items[int(np.argmin(d)) + 1][2]
            raise MddoseError(f"two CT slices at the same position {pos[int(np.argmin(d))]:.3f} mm", dup)
        dz = float(np.median(d))
        bad = np.nonzero(np.abs(d - dz) > 0.01 * dz)[0]
        if bad.size:
            raise MddoseError(f"non-uniform CT slice spacing ({d[bad[0]]:.3f} mm vs {dz:.3f} mm)",
                              items[bad[0] + 1][2])
        for p, ipp, path in items[1:]:
            shift = ipp - items[0][1] - (p - pos[0]) * n
            if np.linalg.norm(shift) > 0.01 * dz + 1e-3:
                raise MddoseError("slices are sheared (gantry tilt); resample the series first", path)
    else:
        dz = float(first.get("SpacingBetweenSlices", None) or first.get("SliceThickness", None) or 1.0)
    ct = np.empty((len(items), rows, cols), np.float32)
    uids = []
    for k, (_, _, path) in enumerate(items):
        ds = _read(path, headers_only=False)
        try:
            arr = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - missing decoder, truncated pixel data, ...
            raise MddoseError(f"cannot decode CT pixels ({exc.__class__.__name__}: {exc})", path) from None
        if arr.shape != (rows, cols):
            raise MddoseError(f"pixel array shape {arr.shape}, expected ({rows}, {cols})", path)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        ct[k] = arr.astype(np.float32) * slope + intercept
        uids.append(str(ds.get("SOPInstanceUID", "")))
    grid = Grid((len(items), rows, cols), (dz, float(ps[0]), float(ps[1])), items[0][1], direction)
    return ct, grid, uids


# ---------------------------------------------------------------------------------------- RTSTRUCT
def fill_polygons(polys: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even–odd scanline fill of closed polygons on the pixel centres of a (Y, X) slice.

    polys: list of (N, 2) continuous (x, y) indices (closure implied). A pixel centre is inside when
    a ray towards -x crosses the polygons' edges an odd number of times (edges are half-open in y), so
    nested contours make holes and overlapping ones cancel. Returns (Y, X) bool.
    """
    h, w = shape
    toggles = np.zeros((h, w + 1), np.int32)
    for poly in polys:
        if len(poly) < 3:
            continue
        p0, p1 = poly, np.roll(poly, -1, axis=0)
        lo, hi = np.minimum(p0[:, 1], p1[:, 1]), np.maximum(p0[:, 1], p1[:, 1])
        r0, r1 = np.maximum(np.ceil(lo), 0).astype(int), np.minimum(np.ceil(hi) - 1, h - 1).astype(int)
        count = np.maximum(r1 - r0 + 1, 0)  # rows y with lo <= y < hi
        if not count.any():
            continue
        edge = np.repeat(np.arange(len(poly)), count)
        rows = np.repeat(r0, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
        a, b = p0[edge], p1[edge]
        xs = a[:, 0] + (rows - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
        cols = np.clip(np.floor(xs).astype(np.int64) + 1, 0, w)  # first pixel centre right of the crossing
        np.add.at(toggles, (rows, cols), 1)
    return (np.cumsum(toggles[:, :w], axis=1) & 1).astype(bool)


def _check_frame_of_reference(ds, path: Path, for_uid: str | None) -> None:
    if not for_uid:
        return
    refs = {str(fr.FrameOfReferenceUID) for fr in ds.get("ReferencedFrameOfReferenceSequence", [])
            if "FrameOfReferenceUID" in fr}
    refs |= {str(r.ReferencedFrameOfReferenceUID) for r in ds.get("StructureSetROISequence", [])
             if "ReferencedFrameOfReferenceUID" in r}
    if refs and for_uid not in refs:
        raise MddoseError(f"RTSTRUCT references frame of reference {sorted(refs)[0]}, "
                          f"the CT is in {for_uid}", path)


def rasterise_rtstruct(ds, path: Path, grid: Grid, roi_map: Mapping[str, str | None] | None = None,
                       for_uid: str | None = None) -> tuple[dict[str, np.ndarray], dict[int, str], set[str]]:
    """RTSTRUCT dataset → (masks name → (Z, Y, X) bool, ROI number → mddose name, names of EXTERNAL ROIs)."""
    _check_frame_of_reference(ds, path, for_uid)
    numbers: dict[int, str] = {}
    for roi in ds.get("StructureSetROISequence", []):
        name = map_roi_name(str(roi.get("ROIName", f"ROI{roi.ROINumber}")), roi_map)
        if name is None:
            continue
        if name in numbers.values():
            logger.warning("%s: two ROIs map to %r; keeping the second as %r", path, name, str(roi.ROIName))
            name = str(roi.ROIName).strip()
        numbers[int(roi.ROINumber)] = name
    external = {numbers[int(o.ReferencedROINumber)] for o in ds.get("RTROIObservationsSequence", [])
                if str(o.get("RTROIInterpretedType", "")).upper() == "EXTERNAL"
                and int(o.get("ReferencedROINumber", -1)) in numbers}
    masks = {name: np.zeros(grid.shape, bool) for name in numbers.values()}
    skipped = 0
    polys: dict[tuple[str, int], list[np.ndarray]] = {}
    for rc in ds.get("ROIContourSequence", []):
        name = numbers.get(int(rc.get("ReferencedROINumber", -1)))
        if name is None:
            continue
        for contour in rc.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper() != "CLOSED_PLANAR":
                continue
            pts = np.asarray(contour.ContourData, float).reshape(-1, 3)
            idx = grid.world_to_index(pts)
            kz = float(np.round(idx[:, 2].mean()))
            if np.abs(idx[:, 2] - kz).max() > 0.5 + 1e-6 or not 0 <= kz < grid.shape[0]:
                skipped += 1
                continue
            polys.setdefault((name, int(kz)), []).append(idx[:, :2])
    for (name, kz), slice_polys in polys.items():
        masks[name][kz] = fill_polygons(slice_polys, grid.shape[1:])
    if skipped:
        logger.warning("%s: %d contours are off the CT slices (or not planar) and were ignored", path, skipped)
    return masks, numbers, external


# ---------------------------------------------------------------------------------------- RTPLAN
def plan_prescriptions(ds, numbers: Mapping[int, str]) -> dict[str, float]:
    """Target ROI name → TargetPrescriptionDose (Gy) from an RTPLAN's DoseReferenceSequence."""
    out: dict[str, float] = {}
    for ref in ds.get("DoseReferenceSequence", []):
        if str(ref.get("DoseReferenceType", "")).upper() != "TARGET":
            continue
        num, rx = ref.get("ReferencedROINumber", None), ref.get("TargetPrescriptionDose", None)
        if num is not None and rx is not None and int(num) in numbers and float(rx) > 0:
            out[numbers[int(num)]] = float(rx)
    return out


def _check_plan_structure_set(plan: tuple[Path, object], struct: tuple[Path, object] | None) -> None:
    """Warn when the RTPLAN references a structure set other than the RTSTRUCT read (ROI numbers may differ)."""
    referenced = {str(r.ReferencedSOPInstanceUID) for r in plan[1].get("ReferencedStructureSetSequence", [])
                  if "ReferencedSOPInstanceUID" in r}
    if struct is not None and referenced and str(struct[1].get("SOPInstanceUID", "")) not in referenced:
        logger.warning("%s: the RTPLAN references another structure set than %s; its ReferencedROINumbers "
                       "are read against that RTSTRUCT's ROI numbers", plan[0], struct[0].name)


# ---------------------------------------------------------------------------------------- patient
def _one(items: list[tuple[Path, object]], what: str, directory: Path, for_uid: str | None):
    """The single item of ``items`` in frame of reference ``for_uid`` (all if none match), else error."""
    if len(items) > 1 and for_uid:
        same = [it for it in items if for_uid in _frames(it[1])]
        items = same or items
    if len(items) > 1:
        raise MddoseError(f"{len(items)} {what} files: " + ", ".join(p.name for p, _ in items) + "; keep one",
                          directory)
    return items[0] if items else None


def _frames(ds) -> set[str]:
    f = {str(fr.FrameOfReferenceUID) for fr in ds.get("ReferencedFrameOfReferenceSequence", [])
         if "FrameOfReferenceUID" in fr}
    if "FrameOfReferenceUID" in ds:
        f.add(str(ds.FrameOfReferenceUID))
    return f


def read_dicom_patient(directory: str | os.PathLike, roi_map: Mapping[str, str | None] | None = None, *,
                       series_uid: str | None = None, patient_id: str | None = None) -> Patient:
    """Read the DICOM-RT files under ``directory`` (searched recursively) into a :class:`Patient`.

    Args:
        directory: holds one CT series, at most one RTSTRUCT (optional), RTDOSE file(s) and RTPLAN.
        roi_map: DICOM ROI name → mddose name (keys case-insensitive/normalised; None drops the ROI),
            merged over :data:`mddose.data.roi_names.DEFAULT_ROI_MAP`.
        series_uid: the CT series to use when there are several (else the one the RTSTRUCT references).
        patient_id: the Patient's id (default: the directory name; DICOM PatientID goes to ``meta``).

    Returns a Patient whose ``meta["dicom"]`` holds the study/series/frame-of-reference/SOP UIDs.
    Raises :class:`MddoseError` (one line naming the file) on missing/ambiguous series, non-uniform
    slices, an RTSTRUCT/RTDOSE in another frame of reference, or an RTDOSE that misses the CT.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MddoseError("not a directory", directory)
    found = _scan(directory)
    structs = found.get("RTSTRUCT", [])
    if not found.get("CT"):
        other = ", ".join(sorted(m or "?" for m in found)) or "no DICOM files"
        raise MddoseError(f"no CT series found ({other})", directory)
    series = _choose_series(found["CT"], directory, series_uid, structs)
    ct, grid, sop_uids = read_ct_series(series)
    head = series[0][1]
    for_uid = str(head.FrameOfReferenceUID) if "FrameOfReferenceUID" in head else None
    meta_dicom = {
        "study_instance_uid": str(head.get("StudyInstanceUID", "")), "series_instance_uid":
        str(head.get("SeriesInstanceUID", "")), "frame_of_reference_uid": for_uid or "",
        "sop_instance_uids": sop_uids, "patient_id": str(head.get("PatientID", "")),
        "patient_name": str(head.get("PatientName", "")), "ct_files": len(series),
    }
    masks: dict[str, np.ndarray] = {}
    numbers: dict[int, str] = {}
    external: set[str] = set()
    struct = _one(structs, "RTSTRUCT", directory, for_uid)
    if struct is not None:
        masks, numbers, external = rasterise_rtstruct(struct[1], struct[0], grid, roi_map, for_uid)
        meta_dicom["rtstruct"] = str(struct[0])
    dose = None
    if found.get("RTDOSE"):
        from mddose.data.dicom_dose import patient_dose

        dose, used = patient_dose(found["RTDOSE"], grid, for_uid)
        meta_dicom["rtdose"] = used
    prescriptions = {n: rx for n in masks if (rx := prescription_from_name(n)) is not None}
    plan = _one(found.get("RTPLAN", []), "RTPLAN", directory, for_uid)
    if plan is not None:
        _check_plan_structure_set(plan, struct)
        prescriptions.update(plan_prescriptions(plan[1], numbers))
        meta_dicom["rtplan_sop_instance_uid"] = str(plan[1].get("SOPInstanceUID", ""))
    pdm, pdm_source = _possible_dose_mask(masks, external, ct)
    meta = {"source": str(directory), "format": "dicom", "possible_dose_mask": pdm_source, "dicom": meta_dicom}
    return Patient(id=patient_id or directory.name, ct=ct, spacing=grid.spacing, masks=masks, dose=dose,
                   possible_dose_mask=pdm, origin=tuple(grid.origin), direction=grid.direction,
                   prescriptions=prescriptions, meta=meta)


def _possible_dose_mask(masks: dict[str, np.ndarray], external: set[str], ct: np.ndarray) -> tuple[np.ndarray, str]:
    """(mask, where it came from); pops the ``PossibleDoseMask`` ROI out of ``masks``."""
    stored = masks.pop(POSSIBLE_DOSE_ROI, None)
    if stored is not None and stored.any():
        return stored, f"ROI {POSSIBLE_DOSE_ROI}"
    for name in [BODY, *sorted(external)]:
        if name in masks and masks[name].any():
            return masks[name].copy(), f"ROI {name}"
    return ct > BODY_HU_THRESHOLD, f"CT > {BODY_HU_THRESHOLD:g} HU"
