"""RTDOSE reading and resampling onto a CT grid (used by :func:`mddose.data.formats.dicom.read.read_dicom_patient`).

* :func:`read_rtdose` — an RTDOSE file as stored (:class:`DoseGrid`: pixels × DoseGridScaling, frames
  at IPP + GridFrameOffsetVector·n; a non-zero first offset is read as absolute positions). A missing
  DoseGridScaling means 1; a zero, negative or non-finite one is an error naming the file.
* :func:`resample_dose` — trilinear interpolation at the CT voxel centres, 0 outside the dose grid
  (1e-3 mm tolerance at its faces). Two paths with the same result: ``"separable"`` (fast, when the
  dose and CT axes are parallel — the usual case: three 1D linear interpolations) and ``"general"``
  (the plain reference: any orientation, :func:`scipy.ndimage.map_coordinates` slice by slice).
* :func:`patient_dose` — choose (one PLAN dose) or sum (BEAM doses) the RTDOSE files of a patient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mddose.data.formats.dicom.files import read_dataset
from mddose.data.formats.dicom.geometry import Grid, floats, orientation
from mddose.errors import MddoseError
from mddose.utils.log import log_once, logger


@dataclass
class DoseGrid:
    """An RTDOSE as stored: ``dose`` (K, R, C) in DoseUnits, frames at ``origin + offsets[k] * n``.

    ``direction`` columns are the row direction ``r`` (along columns), the column direction ``c`` and
    ``n = r × c``; ``pixel_spacing`` is (between rows, between columns); ``offsets`` (K,) increasing.
    """

    dose: np.ndarray
    origin: np.ndarray
    direction: np.ndarray
    pixel_spacing: tuple[float, float]
    offsets: np.ndarray
    units: str
    summation: str
    frame_of_reference_uid: str | None
    path: Path

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """LPS bounding box of the dose voxel centres."""
        k, r, c = self.dose.shape
        pts = [self.origin + self.direction @ np.array([j * self.pixel_spacing[1], i * self.pixel_spacing[0], o])
               for j in (0, c - 1) for i in (0, r - 1) for o in (self.offsets[0], self.offsets[-1])]
        return np.min(pts, 0), np.max(pts, 0)


def read_rtdose(path: str | os.PathLike, ds=None) -> DoseGrid:
    """Read an RTDOSE file into a :class:`DoseGrid` (dose (K, R, C) float64 = pixels × DoseGridScaling)."""
    path = Path(path)
    ds = ds if ds is not None and "PixelData" in ds else read_dataset(path, headers_only=False)
    if ds is None or str(ds.get("Modality", "")).upper() != "RTDOSE":
        raise MddoseError("not an RTDOSE file", path)
    direction = orientation(ds, path)
    origin = floats(ds, "ImagePositionPatient", 3, path)
    ps = floats(ds, "PixelSpacing", 2, path)
    scaling = _dose_grid_scaling(ds, path)
    try:
        pix = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001
        raise MddoseError(f"cannot decode RTDOSE pixels ({exc.__class__.__name__}: {exc})", path) from None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        pix = pix.reshape(frames, int(ds.Rows), int(ds.Columns))
        gfov = ds.get("GridFrameOffsetVector", None)
        offsets = np.asarray([float(v) for v in gfov], float) if gfov is not None else np.zeros(1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise MddoseError(f"malformed RTDOSE frames ({exc.__class__.__name__}: {exc})", path) from None
    if not np.all(np.isfinite(offsets)):
        raise MddoseError("GridFrameOffsetVector holds non-finite values", path)
    if offsets.size == 1 and frames > 1 and gfov is not None:
        raise MddoseError(f"GridFrameOffsetVector has 1 value for {frames} frames", path)
    if offsets.size != frames:
        raise MddoseError(f"GridFrameOffsetVector has {offsets.size} values for {frames} frames", path)
    if offsets[0] != 0:  # absolute positions (allowed for axial IOP): make them relative to the IPP
        offsets = offsets - float(origin @ direction[:, 2])
    dose = pix.astype(np.float64) * scaling
    if frames > 1:
        if np.all(np.diff(offsets) < 0):
            offsets, dose = offsets[::-1].copy(), dose[::-1].copy()
        if not np.all(np.diff(offsets) > 0):
            raise MddoseError("GridFrameOffsetVector is not strictly monotonic", path)
    return DoseGrid(dose, origin, direction, (float(ps[0]), float(ps[1])), offsets,
                    str(ds.get("DoseUnits", "")).upper(), str(ds.get("DoseSummationType", "")).upper(),
                    str(ds.FrameOfReferenceUID) if "FrameOfReferenceUID" in ds else None, path)


def _dose_grid_scaling(ds, path: Path) -> float:
    """DoseGridScaling (Gy per pixel unit): 1 when absent; zero, negative, non-finite → MddoseError."""
    raw = ds.get("DoseGridScaling", None)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return 1.0
    try:
        scaling = float(raw)
    except (TypeError, ValueError):
        raise MddoseError(f"DoseGridScaling {raw!r} is not a number", path) from None
    if not (np.isfinite(scaling) and scaling > 0):
        raise MddoseError(f"DoseGridScaling must be a positive number, got {scaling:g}", path)
    return scaling


def _local_affine(dg: DoseGrid, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(L (3, 3), l0 (3,)): CT index (x, y, z) → dose (column index, row index, offset mm) = L @ idx + l0."""
    scale = np.diag([1 / dg.pixel_spacing[1], 1 / dg.pixel_spacing[0], 1.0])
    to_local = scale @ np.linalg.inv(dg.direction)
    return to_local @ grid.matrix, to_local @ (grid.origin - dg.origin)


def _valid(coord: np.ndarray, lo: float, hi: float, tol: float) -> np.ndarray:
    return (coord >= lo - tol) & (coord <= hi + tol)


def _frame_coords(dg: DoseGrid, off: np.ndarray) -> np.ndarray:
    """Offsets (mm along n) → fractional frame indices (the offsets may be non-uniform)."""
    k = dg.dose.shape[0]
    return np.interp(off, dg.offsets, np.arange(k, dtype=float)) if k > 1 else np.zeros_like(off)


def _lerp(arr: np.ndarray, axis: int, f: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``arr`` along ``axis`` at fractional indices ``f`` (clamped to the ends)."""
    n = arr.shape[axis]
    f = np.clip(f, 0, n - 1)
    i0 = np.clip(np.floor(f).astype(np.int64), 0, max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * arr.ndim
    shape[axis] = len(f)
    w = (f - i0).astype(arr.dtype).reshape(shape)
    return np.take(arr, i0, axis) * (1 - w) + np.take(arr, i1, axis) * w


def _resample_separable(dg: DoseGrid, grid: Grid, tol_mm: float) -> np.ndarray:
    """Axis-parallel grids: three 1D interpolations. Returns (Z, Y, X) float32 (0 outside)."""
    lin, l0 = _local_affine(dg, grid)
    z, y, x = grid.shape
    k, r, c = dg.dose.shape
    fc, fr, off = (lin[i, i] * np.arange(n) + l0[i] for i, n in enumerate((x, y, z)))
    vx = _valid(fc, 0, c - 1, tol_mm / dg.pixel_spacing[1])
    vy = _valid(fr, 0, r - 1, tol_mm / dg.pixel_spacing[0])
    vz = _valid(off, dg.offsets[0], dg.offsets[-1], tol_mm)
    if not (vx.any() and vy.any() and vz.any()):
        return np.zeros(grid.shape, np.float32)
    out = _lerp(dg.dose.astype(np.float32), 0, _frame_coords(dg, off))
    out = _lerp(out, 1, fr)
    out = _lerp(out, 2, fc)
    out *= vz[:, None, None] & vy[None, :, None] & vx[None, None, :]
    return out


def _resample_general(dg: DoseGrid, grid: Grid, tol_mm: float) -> np.ndarray:
    """Any orientation: map_coordinates at each CT slice's voxel centres. Returns (Z, Y, X) float32."""
    from scipy.ndimage import map_coordinates

    lin, l0 = _local_affine(dg, grid)
    z, y, x = grid.shape
    k, r, c = dg.dose.shape
    yy, xx = np.arange(y, dtype=float)[:, None], np.arange(x, dtype=float)[None, :]
    out = np.zeros(grid.shape, np.float32)
    for iz in range(z):
        fc, fr, off = (lin[i, 0] * xx + lin[i, 1] * yy + (lin[i, 2] * iz + l0[i]) for i in range(3))
        inside = (_valid(fc, 0, c - 1, tol_mm / dg.pixel_spacing[1]) & _valid(fr, 0, r - 1, tol_mm / dg.pixel_spacing[0])
                  & _valid(off, dg.offsets[0], dg.offsets[-1], tol_mm))
        if inside.any():
            coords = np.stack([_frame_coords(dg, off[inside]), fr[inside], fc[inside]])
            out[iz][inside] = map_coordinates(dg.dose, coords, order=1, mode="nearest")
    return out


def resample_dose(dg: DoseGrid, grid: Grid, tol_mm: float = 1e-3, method: str = "auto") -> np.ndarray:
    """Trilinear interpolation of ``dg`` at the voxel centres of ``grid`` → (Z, Y, X) float32, 0 outside.

    ``method``: ``"separable"`` (axis-parallel grids only), ``"general"`` (any orientation) or
    ``"auto"`` (separable when possible). Raises MddoseError naming the RTDOSE file when no CT voxel
    centre lies inside the dose grid.
    """
    lin, _ = _local_affine(dg, grid)
    parallel = bool(np.abs(lin - np.diag(np.diag(lin))).max() <= 1e-9 * np.abs(lin).max())
    if method == "auto":
        method = "separable" if parallel else "general"
        log_once(f"dicom-resample-{method}", f"RTDOSE resampling: {method} trilinear path")
    if method == "separable" and not parallel:
        raise MddoseError("method='separable' needs dose and CT axes to be parallel")
    if method not in ("separable", "general"):
        raise MddoseError(f"method: unknown resampling method {method!r}")
    out = (_resample_separable if method == "separable" else _resample_general)(dg, grid, tol_mm)
    if not out.any() and not _overlaps(dg, grid, tol_mm):
        (dlo, dhi), (clo, chi) = dg.bounds(), grid.bounds()
        fmt = lambda a: "(" + ", ".join(f"{v:.1f}" for v in a) + ")"  # noqa: E731
        raise MddoseError(f"RTDOSE grid {fmt(dlo)}..{fmt(dhi)} mm does not overlap the CT grid "
                          f"{fmt(clo)}..{fmt(chi)} mm", dg.path)
    return np.maximum(out, 0.0)


def _overlaps(dg: DoseGrid, grid: Grid, tol_mm: float) -> bool:
    """True if a CT voxel centre lies inside the dose grid (checked slice by slice, cheap)."""
    lin, l0 = _local_affine(dg, grid)
    z, y, x = grid.shape
    k, r, c = dg.dose.shape
    yy, xx = np.arange(y, dtype=float)[:, None], np.arange(x, dtype=float)[None, :]
    for iz in range(z):
        fc, fr, off = (lin[i, 0] * xx + lin[i, 1] * yy + (lin[i, 2] * iz + l0[i]) for i in range(3))
        if (_valid(fc, 0, c - 1, tol_mm / dg.pixel_spacing[1]) & _valid(fr, 0, r - 1, tol_mm / dg.pixel_spacing[0])
                & _valid(off, dg.offsets[0], dg.offsets[-1], tol_mm)).any():
            return True
    return False


def patient_dose(doses: list[tuple[Path, object]], grid: Grid, for_uid: str | None) -> tuple[np.ndarray, list[str]]:
    """Choose/sum the RTDOSE files and resample onto ``grid``; returns (dose (Z, Y, X) Gy, files used)."""
    if len(doses) > 1:
        plans = [d for d in doses if str(d[1].get("DoseSummationType", "")).upper() == "PLAN"]
        beams = [d for d in doses if str(d[1].get("DoseSummationType", "")).upper() in ("BEAM", "CONTROL_POINT")]
        if len(plans) == 1:
            doses = plans
        elif not plans and len(beams) == len(doses):
            logger.info("summing %d per-beam RTDOSE files", len(doses))
        else:
            raise MddoseError(f"{len(doses)} RTDOSE files and no single plan dose: "
                              + ", ".join(p.name for p, _ in doses), doses[0][0].parent)
    total = np.zeros(grid.shape, np.float32)
    for path, header in doses:
        dg = read_rtdose(path)
        if for_uid and dg.frame_of_reference_uid and dg.frame_of_reference_uid != for_uid:
            raise MddoseError(f"RTDOSE frame of reference {dg.frame_of_reference_uid} differs from the "
                              f"CT's {for_uid}", path)
        if dg.units != "GY":
            raise MddoseError(f"DoseUnits is {dg.units or 'missing'}, only GY can be read as a patient dose", path)
        total += resample_dose(dg, grid)
    return total, [str(p) for p, _ in doses]


