"""Flips and axial rotations applied alike to images and priors (augmentation consistency).

:class:`AxialTransform` flips z, y, x (in that order) then rotates the axial (y, x) plane about the grid
centre by ``rotate_deg`` with the exact inverse nearest-neighbour mapping of
:func:`mddose.data.inputs.volume.rotate_axial` (same formula: the same voxels land in the same places;
positive angles turn the image clockwise as seen from the feet, i.e. towards increasing gantry angle).

Scalar priors (signed distances, beam sum, prior dose) move like images. A per-field beam mask moves with
its field: the field at gantry θ becomes the field at :func:`~mddose.data.priors.beams.map_angle` (θ);
:func:`transform_priors` puts each transformed mask in the channel of its new angle, and refuses a
transform that takes a field outside the arrangement (for OpenKBP's nine fields: rotations by 40°·k and x
flips keep it; a y flip or a rotation by 90° does not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from mddose.data.priors.beams import BeamArrangement, map_angle
from mddose.errors import MddoseError


def rotation_source(ny: int, nx: int, degrees: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sy, sx, valid): (Y, X) source indices (clamped) of a nearest rotation by ``degrees`` about the grid
    centre, and where the source lies on the grid."""
    th = math.radians(degrees)
    c, s = math.cos(th), math.sin(th)
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(ny) - cy, np.arange(nx) - cx, indexing="ij")
    sy = np.floor(c * yy - s * xx + cy + 0.5).astype(np.int64)
    sx = np.floor(s * yy + c * xx + cx + 0.5).astype(np.int64)
    valid = (sy >= 0) & (sy < ny) & (sx >= 0) & (sx < nx)
    return np.clip(sy, 0, ny - 1), np.clip(sx, 0, nx - 1), valid


@dataclass(frozen=True)
class AxialTransform:
    """Flip z / y / x, then rotate the axial plane by ``rotate_deg`` (clockwise seen from the feet)."""

    flip_z: bool = False
    flip_y: bool = False
    flip_x: bool = False
    rotate_deg: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.rotate_deg)):
            raise MddoseError(f"rotation angle {self.rotate_deg!r} is not a finite number")

    def apply(self, arr: np.ndarray, pad: float | None = 0.0) -> np.ndarray:
        """Transform (..., Z, Y, X) (or (..., Y, X) without ``flip_z``); voxels rotated in from off the grid
        get ``pad``, or the nearest edge value when ``pad`` is None."""
        a = np.asarray(arr)
        if self.flip_z:
            if a.ndim < 3:
                raise MddoseError("a z flip needs a volume (..., Z, Y, X)")
            a = np.flip(a, axis=-3)
        if self.flip_y:
            a = np.flip(a, axis=-2)
        if self.flip_x:
            a = np.flip(a, axis=-1)
        if float(self.rotate_deg) % 360.0 != 0.0:
            sy, sx, valid = rotation_source(a.shape[-2], a.shape[-1], float(self.rotate_deg))
            a = a[..., sy, sx]
            if pad is not None:
                a = np.where(valid, a, np.asarray(pad, dtype=a.dtype))
        return np.ascontiguousarray(a)

    def angle(self, theta: float) -> float:
        """Where the field at gantry ``theta`` goes."""
        return map_angle(theta, flip_x=self.flip_x, flip_y=self.flip_y, rotate_deg=self.rotate_deg)

    def arrangement(self, arrangement: BeamArrangement) -> BeamArrangement:
        """The arrangement's fields after this transform (same channel order)."""
        return arrangement.transformed(flip_x=self.flip_x, flip_y=self.flip_y, rotate_deg=self.rotate_deg)


def _match(angle: float, angles: tuple[float, ...], tol: float = 1e-3) -> int | None:
    for i, a in enumerate(angles):
        if min(abs(angle - a), 360.0 - abs(angle - a)) <= tol:
            return i
    return None


def transform_priors(priors: Mapping[str, np.ndarray], t: AxialTransform,
                     arrangement: BeamArrangement) -> dict[str, np.ndarray]:
    """Apply ``t`` to every prior channel as to the images, relabelling per-field beam masks.

    Args:
        priors: channel name → (Z, Y, X) (or (Y, X) slices) arrays, as :func:`compute_priors` returns.
        arrangement: the fields behind the ``beam_<angle>`` channels.
    Returns:
        The same keys in the same order; ``beam_<θ>`` holds the transformed mask of the field that ``t``
        moves onto θ. Signed distances are padded with the nearest edge value, the rest with 0.
    Raises:
        MddoseError if ``t`` moves a field onto an angle outside the arrangement.
    """
    names = arrangement.channel_names()
    angles = arrangement.gantry_deg
    out: dict[str, np.ndarray] = {}
    moved: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        if name not in priors:
            continue
        j = _match(t.angle(angles[i]), angles)
        if j is None:
            raise MddoseError(f"the transform (flips z/y/x {t.flip_z}/{t.flip_y}/{t.flip_x}, rotation "
                              f"{float(t.rotate_deg):g}°) moves the {angles[i]:g}° field to {t.angle(angles[i]):g}°, "
                              "outside the beam arrangement; use rotations and flips that keep it")
        moved[names[j]] = t.apply(priors[name])
    for key, arr in priors.items():
        if key in moved:
            out[key] = moved[key]
        elif key in names:
            raise MddoseError(f"priors: channel {key} has no field moved onto it")
        else:
            out[key] = t.apply(arr, pad=None if key.startswith("sdf") else 0.0)
    return out
