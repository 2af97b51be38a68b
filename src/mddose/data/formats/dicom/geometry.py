"""DICOM image geometry: :class:`Grid` (a regular voxel grid in LPS) and the checked readers of the
geometry attributes (:func:`orientation`, :func:`floats`), shared by the CT, RTSTRUCT and RTDOSE code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mddose.data.patient import Patient
from mddose.errors import MddoseError


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


def orientation(ds, path: Path) -> np.ndarray:
    """(3, 3) columns r, c, n from ImageOrientationPatient; one-line MddoseError naming ``path`` if invalid."""
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


def floats(ds, keyword: str, n: int, path: Path) -> np.ndarray:
    """(n,) float64 of the multi-valued attribute ``keyword``; missing, non-numeric or non-finite → MddoseError."""
    try:
        v = np.asarray([float(x) for x in getattr(ds, keyword)], float)
    except (AttributeError, TypeError, ValueError):
        raise MddoseError(f"missing or invalid {keyword}", path) from None
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise MddoseError(f"{keyword} must be {n} finite numbers", path)
    return v
