"""Where a predicted dose is wrong: its error by distance to the targets.

A dose score is one number per patient; a planner asks *where* the dose is wrong, and whether it is wrong the
same way everywhere (a plan-level offset no geometry decides) or by voxel. :func:`error_by_distance` splits the
possible-dose mask into bands of signed distance to the targets' union (inside, 0–10 mm, 10–30 mm, beyond by
default) and gives, per band, its share of the mask's voxels, the mean absolute error and the mean signed error
(prediction − reference; positive: too much dose predicted).

The script :mod:`mddose.bench.scripts.error_bands` prints it for a folder of predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mddose.errors import MddoseError

#: Band edges (mm) of the signed distance to the targets' union (negative inside): inside, 0–10, 10–30, > 30 mm.
DEFAULT_EDGES_MM = (0.0, 10.0, 30.0)


@dataclass(frozen=True)
class Band:
    """One band of distance to the targets: ``(low, high]`` mm (``-inf`` = inside), share of the possible-dose
    mask's voxels, mean absolute and mean signed error (Gy; NaN for an empty band)."""

    low: float
    high: float
    fraction: float
    mae: float
    bias: float

    @property
    def name(self) -> str:
        if self.low == -np.inf:
            return "inside"
        return f">{self.low:g} mm" if self.high == np.inf else f"{self.low:g}-{self.high:g} mm"


def error_by_distance(reference: np.ndarray, prediction: np.ndarray, targets: np.ndarray,
                      possible_dose_mask: np.ndarray, spacing: Sequence[float],
                      edges_mm: Sequence[float] = DEFAULT_EDGES_MM) -> list[Band]:
    """The error of ``prediction`` by band of signed distance to ``targets`` (see the module docstring).

    Args:
        reference, prediction: (Z, Y, X) Gy.
        targets: (Z, Y, X) bool, the union of the target ROIs (must have a voxel).
        possible_dose_mask: (Z, Y, X) bool, the voxels scored (must have a voxel).
        spacing: voxel sizes (mm) along (z, y, x).
        edges_mm: increasing band edges; bands ``(-inf, e0], (e0, e1], …, (e_last, inf)``.
    """
    from mddose.data.priors.distance import signed_distance

    shape = reference.shape
    if prediction.shape != shape or targets.shape != shape or possible_dose_mask.shape != shape:
        raise MddoseError(f"error by distance: shapes differ (reference {shape}, prediction {prediction.shape}, "
                          f"targets {targets.shape}, mask {possible_dose_mask.shape})")
    if not targets.any() or not possible_dose_mask.any():
        raise MddoseError("error by distance: the targets and the possible-dose mask must each have a voxel")
    if list(edges_mm) != sorted(set(edges_mm)):
        raise MddoseError(f"error by distance: band edges must increase, got {list(edges_mm)}")
    sd = signed_distance(targets, spacing)[possible_dose_mask]
    err = (prediction.astype(np.float64) - reference.astype(np.float64))[possible_dose_mask]
    bounds = [-np.inf, *map(float, edges_mm), np.inf]
    bands = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        inb = (sd > lo) & (sd <= hi)
        n = int(inb.sum())
        bands.append(Band(lo, hi, n / sd.size, float(np.abs(err[inb]).mean()) if n else float("nan"),
                          float(err[inb].mean()) if n else float("nan")))
    return bands
