"""RTSTRUCT → masks: check the structure set, then rasterise its closed planar contours.

Each CLOSED_PLANAR contour is assigned to the nearest CT slice and rasterised on the voxel centres by an
even–odd scanline fill (:func:`fill_polygons`, all contours of one ROI on one slice together), so holes
drawn as separate contours are handled; POINT and OPEN contours are ignored. Names are mapped with
:mod:`mddose.data.roi_names`. :func:`check_rtstruct` refuses an incomplete structure set (a truncated
file reads without error in pydicom and would otherwise give a patient with missing ROIs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from mddose.data.formats.dicom.geometry import Grid
from mddose.data.roi_names import map_roi_name
from mddose.errors import MddoseError
from mddose.utils.log import logger


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


#: The RTSTRUCT sequences that must be present (type 1 in the Structure Set and ROI Contour modules).
REQUIRED_SEQUENCES = ("StructureSetROISequence", "ROIContourSequence", "RTROIObservationsSequence")


def check_rtstruct(ds, path: Path) -> None:
    """Refuse an RTSTRUCT that is incomplete (e.g. a truncated file, which pydicom reads without complaint).

    Every sequence of :data:`REQUIRED_SEQUENCES` must be present, every ROI must have a ROINumber, every
    ROI contour a ReferencedROINumber, and every contour its ContourData: ``3 · NumberOfContourPoints``
    finite numbers. Raises a one-line MddoseError naming ``path`` otherwise.
    """
    missing = [k for k in REQUIRED_SEQUENCES if k not in ds]
    if missing:
        raise MddoseError(f"incomplete RTSTRUCT: no {', '.join(missing)} (truncated file?)", path)
    try:
        for i, roi in enumerate(ds.StructureSetROISequence, 1):
            if "ROINumber" not in roi:
                raise MddoseError(f"incomplete RTSTRUCT: ROI item {i} has no ROINumber (truncated file?)", path)
        for i, rc in enumerate(ds.ROIContourSequence, 1):
            if "ReferencedROINumber" not in rc:
                raise MddoseError(f"incomplete RTSTRUCT: ROI contour item {i} has no ReferencedROINumber", path)
            for j, contour in enumerate(rc.get("ContourSequence", []), 1):
                where = f"ROI contour {i}, contour {j}"
                if "ContourData" not in contour:
                    raise MddoseError(f"incomplete RTSTRUCT: {where} has no ContourData (truncated file?)", path)
                data = np.asarray(contour.ContourData, dtype=float).reshape(-1)
                n = contour.get("NumberOfContourPoints", None)
                if data.size % 3 or (n is not None and data.size != 3 * int(n)) or not np.all(np.isfinite(data)):
                    raise MddoseError(f"incomplete RTSTRUCT: {where} has {data.size} ContourData values for "
                                      f"{n if n is not None else '?'} points (truncated file?)", path)
    except MddoseError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise MddoseError(f"malformed RTSTRUCT ({exc.__class__.__name__}: {exc})", path) from None


def rasterise_rtstruct(ds, path: Path, grid: Grid, roi_map: Mapping[str, str | None] | None = None,
                       for_uid: str | None = None) -> tuple[dict[str, np.ndarray], dict[int, str], set[str]]:
    """RTSTRUCT dataset → (masks name → (Z, Y, X) bool, ROI number → mddose name, names of EXTERNAL ROIs).

    Attributes that are missing or malformed where they are used (a contour without ContourData, a
    non-numeric ROINumber, ...) are one-line MddoseErrors naming ``path``.
    """
    try:
        return _rasterise(ds, path, grid, roi_map, for_uid)
    except MddoseError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise MddoseError(f"malformed RTSTRUCT ({exc.__class__.__name__}: {exc})", path) from None


def _rasterise(ds, path: Path, grid: Grid, roi_map: Mapping[str, str | None] | None,
               for_uid: str | None) -> tuple[dict[str, np.ndarray], dict[int, str], set[str]]:
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
