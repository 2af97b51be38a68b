"""Reading a CT series: choosing the series of a patient folder and stacking its slices.

Slices are sorted along the slice normal ``n = r × c`` (see :mod:`mddose.data.formats.dicom.read` for the
geometry conventions); a non-uniform spacing, duplicate positions and sheared (gantry-tilted) series are
refused with an error naming the slice at fault.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mddose.data.formats.dicom.files import read_dataset
from mddose.data.formats.dicom.geometry import Grid, floats, orientation
from mddose.errors import MddoseError


def choose_series(cts: list[tuple[Path, object]], directory: Path, series_uid: str | None,
                  structs: list[tuple[Path, object]]) -> list[tuple[Path, object]]:
    """The CT slices of one series: ``series_uid``, the only one, or the one the RTSTRUCT references."""
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


def _odd_slice(bad: np.ndarray) -> int:
    """Index (in slice order) of the slice to blame for irregular gaps ``bad`` (indices into the diffs):
    a slice whose gaps on both sides are irregular is misplaced itself; otherwise the slice after the gap."""
    for i in bad[:-1]:
        if i + 1 in bad:
            return int(i) + 1
    return int(bad[0]) + 1


def _gap_hint(bad: np.ndarray, d: np.ndarray, dz: float, ignored: list[Path]) -> str:
    """``"; N slice(s) missing ..."`` when the first irregular gap is a whole multiple of the spacing."""
    ratio = d[bad[0]] / dz
    if ratio < 1.5 or abs(ratio - round(ratio)) > 0.01:
        return ""
    hint = f"; {round(ratio) - 1} slice(s) missing here"
    if ignored:
        hint += f" (files that are not DICOM: {', '.join(p.name for p in ignored[:3])})"
    return hint


def _size(ds, path: Path) -> tuple[int, int]:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise MddoseError("missing or invalid Rows/Columns", path) from None
    if rows < 1 or cols < 1:
        raise MddoseError(f"image size {rows} x {cols} is empty", path)
    return rows, cols


def _rescale(ds, path: Path) -> tuple[float, float]:
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        raise MddoseError("RescaleSlope/RescaleIntercept are not numbers", path) from None
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise MddoseError("RescaleSlope/RescaleIntercept are not finite", path)
    return slope, intercept


def read_ct_series(files: list[tuple[Path, object]], ignored: list[Path] = ()) -> tuple[np.ndarray, Grid, list[str]]:
    """Read one CT series. Returns (ct (Z, Y, X) float32 HU, grid, SOPInstanceUIDs in slice order).

    Errors name the slice at fault: a slice at the same position as another, a misplaced slice (both of
    its gaps irregular), the slice after a gap (``ignored`` non-DICOM files are mentioned there).
    """
    first_path, first = files[0]
    direction = orientation(first, first_path)
    n = direction[:, 2]
    ps = floats(first, "PixelSpacing", 2, first_path)
    rows, cols = _size(first, first_path)
    items = []
    for path, ds in files:
        if np.abs(orientation(ds, path) - direction).max() > 1e-4:
            raise MddoseError("ImageOrientationPatient differs from the rest of the series", path)
        if _size(ds, path) != (rows, cols) or np.abs(floats(ds, "PixelSpacing", 2, path) - ps).max() > 1e-4:
            raise MddoseError("image size or PixelSpacing differs from the rest of the series", path)
        ipp = floats(ds, "ImagePositionPatient", 3, path)
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
            raise MddoseError(f"non-uniform CT slice spacing ({d[bad[0]]:.3f} mm vs {dz:.3f} mm)"
                              + _gap_hint(bad, d, dz, ignored), items[_odd_slice(bad)][2])
        for p, ipp, path in items[1:]:
            shift = ipp - items[0][1] - (p - pos[0]) * n
            if np.linalg.norm(shift) > 0.01 * dz + 1e-3:
                raise MddoseError("slices are sheared (gantry tilt); resample the series first", path)
    else:
        try:
            dz = float(first.get("SpacingBetweenSlices", None) or first.get("SliceThickness", None) or 1.0)
        except (TypeError, ValueError):
            dz = 1.0
        if not (np.isfinite(dz) and dz > 0):
            dz = 1.0
    ct = np.empty((len(items), rows, cols), np.float32)
    uids = []
    for k, (_, _, path) in enumerate(items):
        ds = read_dataset(path, headers_only=False)
        try:
            arr = ds.pixel_array  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - missing decoder, truncated pixel data, ...
            raise MddoseError(f"cannot decode CT pixels ({exc.__class__.__name__}: {exc})", path) from None
        if arr.shape != (rows, cols):
            raise MddoseError(f"pixel array shape {arr.shape}, expected ({rows}, {cols})", path)
        slope, intercept = _rescale(ds, path)
        ct[k] = arr.astype(np.float32) * slope + intercept
        uids.append(str(ds.get("SOPInstanceUID", "")))
    grid = Grid((len(items), rows, cols), (dz, float(ps[0]), float(ps[1])), items[0][1], direction)
    return ct, grid, uids
