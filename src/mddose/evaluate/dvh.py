"""Dose-volume histograms and dose-volume metrics on plain arrays.

Conventions (the same as the OpenKBP evaluator, see :mod:`mddose.evaluate.openkbp`):

* ``D_x%`` — the dose received by at least x % of the ROI volume = ``np.percentile(roi_dose, 100 − x)``
  (linear interpolation); ``D_98`` is a near-minimum, ``D_2`` a near-maximum dose.
* ``D_0.1cc`` — the dose received by the hottest 0.1 cc: percentile ``100 − n / N × 100`` with
  ``n = max(1, round(100 mm³ / voxel volume))`` voxels.
* ``V_d`` — the fraction of the ROI volume receiving **at least** ``d`` Gy.
* A cumulative DVH is ``volume_fraction[i]`` = fraction of ROI voxels with dose ≥ ``bins[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from mddose.evaluate.openkbp import d_tenth_cc


def dose_at_volume(roi_dose: np.ndarray, percent: float) -> float:
    """``D_percent``: (N,) doses of an ROI → the dose covering ``percent`` % of it (Gy)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"volume percent must be in [0, 100], got {percent}")
    roi_dose = np.asarray(roi_dose, dtype=np.float64)
    if roi_dose.size == 0:
        raise ValueError("empty ROI")
    return float(np.percentile(roi_dose, 100.0 - percent))


def volume_at_dose(roi_dose: np.ndarray, dose_gy: float) -> float:
    """``V_dose``: fraction (0–1) of the ROI's voxels receiving ≥ ``dose_gy``."""
    roi_dose = np.asarray(roi_dose)
    if roi_dose.size == 0:
        raise ValueError("empty ROI")
    return float(np.count_nonzero(roi_dose >= dose_gy) / roi_dose.size)


def dose_at_cc(roi_dose: np.ndarray, voxel_volume_mm3: float) -> float:
    """``D_0.1cc`` (Gy) of an ROI; ``voxel_volume_mm3`` the volume of one voxel."""
    return d_tenth_cc(roi_dose, voxel_volume_mm3)


@dataclass(frozen=True)
class DVH:
    """A cumulative DVH: ``bins`` (B,) Gy, ``volume`` (B,) fraction of the ROI with dose ≥ bin."""

    roi: str
    bins: np.ndarray
    volume: np.ndarray

    def to_dict(self) -> dict:
        return {"roi": self.roi, "bins": self.bins.tolist(), "volume": self.volume.tolist()}


def cumulative_dvh(roi_dose: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """The cumulative DVH of one ROI: (B,) float64 fraction (0–1) of its voxels receiving ≥ each bin.

    Args:
        roi_dose: (N,) Gy, the doses of the ROI's voxels (any shape is flattened), e.g. ``dose[mask]``.
        bins: (B,) doses in Gy (any order).

    Raises:
        ValueError for an empty ROI (N = 0): its DVH is undefined, as its ``D_x`` and ``V_d`` are
        (:func:`dose_at_volume`, :func:`volume_at_dose`); callers leave empty ROIs out.
    """
    roi_dose = np.sort(np.asarray(roi_dose, dtype=np.float64).ravel())
    bins = np.asarray(bins, dtype=np.float64)
    if roi_dose.size == 0:
        raise ValueError("empty ROI: a DVH needs at least one voxel")
    below = np.searchsorted(roi_dose, bins, side="left")  # voxels with dose < bin
    return (roi_dose.size - below) / roi_dose.size


def default_bins(max_dose: float, step: float = 0.1) -> np.ndarray:
    """Dose bins 0, step, … up to just past ``max_dose`` (Gy)."""
    top = max(float(max_dose), step)
    return np.arange(0.0, top + 2 * step, step)


def dvh_curves(dose: np.ndarray, masks: Mapping[str, np.ndarray], bins: np.ndarray | None = None,
               step: float = 0.1) -> dict[str, DVH]:
    """Cumulative DVH of every non-empty ROI.

    Args:
        dose: (Z, Y, X) Gy.
        masks: ROI name → (Z, Y, X) bool.
        bins: (B,) ascending Gy; default ``default_bins(dose.max(), step)``.
    """
    dose = np.asarray(dose)
    if bins is None:
        bins = default_bins(float(dose.max()) if dose.size else 0.0, step)
    out = {}
    for name, m in masks.items():
        m = np.asarray(m, dtype=bool)
        if m.any():
            out[name] = DVH(name, np.asarray(bins, dtype=np.float64), cumulative_dvh(dose[m], bins))
    return out
