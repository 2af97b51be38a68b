"""Beam's-eye-view apertures and the per-field beam masks.

The **aperture** of field θ on slice z is the set of rays ``u`` (see :mod:`.geometry`) that cross a target
on that slice — the targets' projection along the (diverging) beam — grown by ``margin_mm`` in the beam's
eye view (across rays at the isocentre plane and across slices). The **beam mask** of the field is every
voxel on an aperture ray, from the source side to the exit, clipped to the dose region (the body): the
voxels through which that field must pass to reach the targets.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

#: Threshold of resampled {0, 1} masks: a sample exactly between an inside and an outside voxel (0.5) counts
#: as inside whatever the float rounding, so mirrored or rotated grids give mirrored or rotated masks.
TIE = 0.5 - 1e-3


def projections(targets_bf: np.ndarray) -> np.ndarray:
    """Beam's-eye views of target masks sampled in the beam frame.

    Args:
        targets_bf: (L, Z, F, n_d, n_u) float32 in [0, 1] (bilinearly resampled masks).
    Returns:
        (L, Z, F, n_u) bool: a ray sees target ``l`` where the resampled mask reaches 0.5 along it.
    """
    return targets_bf.max(axis=3) >= TIE


def grow(aperture: np.ndarray, margin_mm: float, spacing_zu: Sequence[float]) -> np.ndarray:
    """Grow apertures by ``margin_mm`` (Euclidean, in the (z, u) plane of each field and level).

    Args:
        aperture: (..., Z, F, n_u) bool.
        spacing_zu: (sz, step) mm.
    Returns:
        (..., Z, F, n_u) bool.
    """
    if margin_mm <= 0 or not aperture.any():
        return aperture.copy()
    lead = aperture.shape[:-3]
    z, f, n_u = aperture.shape[-3:]
    # one transform for all levels and fields: they are stacked along an axis sampled so far apart that
    # no distance reaches across it within the margin
    stack = np.moveaxis(aperture.reshape(-1, z, f, n_u), 2, 1).reshape(-1, z, n_u)
    far = 10.0 * (margin_mm + z * spacing_zu[0] + n_u * spacing_zu[1])
    dist = ndimage.distance_transform_edt(~stack, sampling=(far, float(spacing_zu[0]), float(spacing_zu[1])))
    grown = (dist <= margin_mm + 1e-6).reshape(-1, f, z, n_u)
    return np.moveaxis(grown, 1, 2).reshape(*lead, z, f, n_u)


def beam_masks_from_apertures(aperture_patient: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(F, Z, Y, X) bool beam masks from apertures resampled to the patient, clipped to ``region`` (Z, Y, X)."""
    return (aperture_patient >= TIE) & region[None]
