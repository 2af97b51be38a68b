"""The beam's frame: resampling axial slices into divergent (fan) beam coordinates and back.

Coplanar fields lie in axial planes, so every slice is handled in 2D and the slices (and channels) are
batched as channels of one ``torch.nn.functional.grid_sample`` call; the fields are batched too.

Beam frame of field θ (all lengths in mm, in the array-axis frame ``(y, x)`` of :mod:`.beams`):

* ``d`` — signed distance along the central axis from the isocentre's plane (``beam(θ)`` direction,
  negative towards the source), sampled from ``-radius`` to ``+radius`` with ``step`` mm;
* ``u`` — lateral position **at the isocentre plane** (along ``lateral(θ)``); the ray ``u`` at depth ``d``
  is at ``iso + d·beam + u·(SAD + d)/SAD·lateral``: columns of constant ``u`` are the diverging rays from
  the source, so a cumulative sum along ``d`` is a radiological depth along each ray and the projection of
  a mask along ``d`` is its beam's-eye view (in-plane divergence; along z the field is parallel, an
  approximation of ≤ 8 % of the field length at 80 mm from the isocentre, absorbed by the margin).

The ``u`` range ``±radius·SAD/(SAD − radius)`` covers the whole disc of ``radius`` around the isocentre.
Samples off the patient grid read 0 (air for a density).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mddose.data.priors.beams import BeamArrangement, beam_vectors
from mddose.errors import MddoseError


@dataclass(frozen=True)
class BeamFrame:
    """Sampling geometry of all fields of one patient (see the module docstring).

    Attributes:
        shape_yx: (Y, X) of the patient's axial slices; spacing_yx: (sy, sx) mm.
        iso_yx: isocentre in mm from voxel [.., 0, 0] along (y, x).
        angles: gantry angles (degrees); sad: source–axis distance (mm).
        radius: half-length (mm) of the ``d`` axis; step: sample spacing (mm) along ``d`` and ``u``.
        n_d, n_u: samples along ``d`` and ``u``; half_u: half-width (mm) of the ``u`` axis.
        beams, laterals: (F, 2) float64 unit vectors in (y, x).
    """

    shape_yx: tuple[int, int]
    spacing_yx: tuple[float, float]
    iso_yx: tuple[float, float]
    angles: tuple[float, ...]
    sad: float
    radius: float
    step: float
    n_d: int
    n_u: int
    half_u: float
    beams: np.ndarray
    laterals: np.ndarray

    @classmethod
    def build(cls, arrangement: BeamArrangement, shape_yx, spacing_yx, iso_yx, radius: float,
              direction: np.ndarray | None = None) -> "BeamFrame":
        """The frame covering the disc of ``radius`` mm around ``iso_yx`` (mm), sampled at min(sy, sx)."""
        sad = arrangement.sad_mm
        if radius >= 0.9 * sad:
            raise MddoseError(f"inputs.priors.sad_mm: the patient ({radius:.0f} mm around the isocentre) does not "
                              f"fit inside 0.9 × SAD = {0.9 * sad:.0f} mm")
        step = float(min(spacing_yx))
        n_d = int(math.ceil(2 * radius / step)) + 1            # both axes centred on the isocentre (symmetric
        half_u = radius * sad / (sad - radius)                # under mirrors), covering at least the disc
        n_u = int(math.ceil(2 * half_u / step)) + 1
        radius, half_u = (n_d - 1) / 2 * step, (n_u - 1) / 2 * step
        vecs = [beam_vectors(a, direction) for a in arrangement.gantry_deg]
        return cls(tuple(int(n) for n in shape_yx), tuple(float(s) for s in spacing_yx),
                   tuple(float(c) for c in iso_yx), arrangement.gantry_deg, sad, float(radius), step, n_d, n_u,
                   float(half_u), np.stack([v[0] for v in vecs]), np.stack([v[1] for v in vecs]))

    # ------------------------------------------------------------------ axes
    @property
    def d_mm(self) -> np.ndarray:
        """(n_d,) float64: depth coordinate of each sample from the isocentre plane (mm)."""
        return -self.radius + self.step * np.arange(self.n_d)

    @property
    def u_mm(self) -> np.ndarray:
        """(n_u,) float64: lateral coordinate at the isocentre plane (mm)."""
        return -self.half_u + self.step * np.arange(self.n_u)

    # ------------------------------------------------------------------ grids
    def forward_grid(self) -> torch.Tensor:
        """(1, F·n_d, n_u, 2) float32 grid_sample grid (x, y normalised, align_corners=True) over the patient's
        (Y, X) slice: row ``f·n_d + i`` is depth sample ``i`` of field ``f``."""
        d = self.d_mm[None, :, None]
        u = self.u_mm[None, None, :]
        scale = (self.sad + d) / self.sad
        b, lat = self.beams[:, None, None, :], self.laterals[:, None, None, :]
        p = np.asarray(self.iso_yx) + d[..., None] * b + (u * scale)[..., None] * lat      # (F, n_d, n_u, 2) mm
        iy, ix = p[..., 0] / self.spacing_yx[0], p[..., 1] / self.spacing_yx[1]
        ny, nx = self.shape_yx
        g = np.stack([2 * ix / max(nx - 1, 1) - 1, 2 * iy / max(ny - 1, 1) - 1], axis=-1)
        return torch.from_numpy(g.reshape(1, -1, self.n_u, 2).astype(np.float32))

    def backward_grid(self, box: tuple[slice, slice] | None = None) -> torch.Tensor:
        """(F, Y', X', 2) float32 grid over the beam frame (n_d, n_u): where each patient voxel of ``box``
        (rows, columns; default the whole slice) lies in each field."""
        ny, nx = self.shape_yx
        rows, cols = box if box is not None else (slice(0, ny), slice(0, nx))
        py = np.arange(ny)[rows] * self.spacing_yx[0] - self.iso_yx[0]
        px = np.arange(nx)[cols] * self.spacing_yx[1] - self.iso_yx[1]
        py, px = py[None, :, None], px[None, None, :]
        b, lat = self.beams[:, :, None, None], self.laterals[:, :, None, None]
        d = py * b[:, 0] + px * b[:, 1]                                          # (F, Y, X)
        u = (py * lat[:, 0] + px * lat[:, 1]) * self.sad / np.maximum(self.sad + d, 1e-3)
        gi_d = (d + self.radius) / self.step
        gi_u = (u + self.half_u) / self.step
        g = np.stack([2 * gi_u / max(self.n_u - 1, 1) - 1, 2 * gi_d / max(self.n_d - 1, 1) - 1], axis=-1)
        return torch.from_numpy(g.astype(np.float32))

    # ------------------------------------------------------------------ resampling
    def to_beam(self, vol: np.ndarray) -> np.ndarray:
        """(C, Y, X) float32 slices → (C, F, n_d, n_u) float32 in every field's frame (bilinear, 0 off-grid)."""
        t = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None]
        out = F.grid_sample(t, self.forward_grid(), mode="bilinear", padding_mode="zeros", align_corners=True)
        return out[0].reshape(vol.shape[0], len(self.angles), self.n_d, self.n_u).numpy()

    def to_patient(self, beam_vol: np.ndarray, box: tuple[slice, slice] | None = None) -> np.ndarray:
        """(F, C, n_d, n_u) float32 per-field beam-frame volumes → (F, C, Y', X') on the patient's slices,
        restricted to ``box`` (rows, columns; default the whole slice: (Y, X)).

        ``n_d`` may be 1 for quantities constant along each ray (an aperture): then each voxel reads the value
        of its ray (``u``), wherever it lies along the beam."""
        t = torch.from_numpy(np.ascontiguousarray(beam_vol, dtype=np.float32))
        grid = self.backward_grid(box)
        if t.shape[2] == 1:
            grid = grid.clone()
            grid[..., 1] = 0.0
        out = F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.numpy()
