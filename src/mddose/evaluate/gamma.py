"""3D gamma index (Low et al. 1998), global normalisation, with a low-dose threshold.

For each reference voxel ``r`` with dose ≥ ``cutoff_percent`` % of the reference maximum:

    γ(r) = min over s of sqrt( |s|² / DTA² + (D_eval(r + s) − D_ref(r))² / ΔD² ),
    ΔD = dose_percent % of the reference maximum (global gamma).

``s`` runs over a lattice of step ``step_mm`` (default DTA / 5) inside the sphere of radius
``max_gamma × DTA``; ``D_eval(r + s)`` is trilinearly interpolated (the grid is extended by its edge
values). Voxels whose γ exceeds ``max_gamma`` get ``inf``; voxels below the threshold get NaN. The pass
rate is the fraction of evaluated voxels with γ ≤ 1.

:func:`gamma_index` is the fast path (offsets sorted by length; a voxel stops being searched as soon
as no longer offset can lower its γ; flat-index gathers on the evaluated voxels only).
:func:`gamma_index_ref` is the plain reference (every offset, whole-grid interpolation with
``scipy.ndimage.map_coordinates``) with the same signature and, up to float rounding, the same result.
pymedphys' gamma needs numba (absent here) for its default interpolation and is far slower on 128³.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mddose.utils.log import log_once


def search_offsets(spacing: Sequence[float], radius_mm: float, step_mm: float) -> np.ndarray:
    """(K, 3) offsets in mm (z, y, x) on a lattice of step ``step_mm`` within ``radius_mm``, by length.

    Offsets that are whole multiples of the voxel spacing are added so that grid shifts are exact.
    """
    n = int(math.floor(radius_mm / step_mm + 1e-9))
    ax = np.arange(-n, n + 1) * step_mm
    grids = [ax, ax, ax]
    for k, sp in enumerate(spacing):  # whole-voxel offsets
        m = int(math.floor(radius_mm / sp + 1e-9))
        grids[k] = np.union1d(ax, np.arange(-m, m + 1) * float(sp))
    s = np.stack(np.meshgrid(*grids, indexing="ij"), -1).reshape(-1, 3)
    d2 = (s ** 2).sum(1)
    s = s[d2 <= radius_mm ** 2 * (1 + 1e-9)]
    order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], (s ** 2).sum(1)))
    return s[order]


def _setup(reference, evaluation, dose_percent, cutoff_percent, reference_max):
    ref = np.asarray(reference, dtype=np.float64)
    ev = np.asarray(evaluation, dtype=np.float64)
    if ref.shape != ev.shape or ref.ndim != 3:
        raise ValueError(f"gamma needs two 3D arrays of one shape, got {ref.shape} and {ev.shape}")
    dmax = float(ref.max()) if reference_max is None else float(reference_max)
    return ref, ev, dmax, dose_percent / 100.0 * dmax, cutoff_percent / 100.0 * dmax


def gamma_index(reference: np.ndarray, evaluation: np.ndarray, spacing: Sequence[float], *,
                dose_percent: float = 3.0, dta_mm: float = 3.0, cutoff_percent: float = 10.0,
                max_gamma: float = 1.0, step_mm: float | None = None,
                reference_max: float | None = None) -> np.ndarray:
    """Gamma of ``evaluation`` against ``reference`` (fast path).

    Args:
        reference, evaluation: (Z, Y, X) dose (Gy) on one grid.
        spacing: (sz, sy, sx) mm.
        dose_percent: ΔD in % of the reference maximum (or of ``reference_max``).
        dta_mm: distance to agreement.
        cutoff_percent: voxels with reference dose below this % of the maximum are not evaluated.
        max_gamma: search radius in units of DTA; larger γ are reported as ``inf``.
        step_mm: search lattice step (default ``dta_mm / 5``).
    Returns:
        (Z, Y, X) float32 γ; NaN where not evaluated.
    """
    log_once("gamma-path", "gamma: vectorised shell search (mddose.evaluate.gamma.gamma_index)")
    ref, ev, dmax, dd, thr = _setup(reference, evaluation, dose_percent, cutoff_percent, reference_max)
    out = np.full(ref.shape, np.nan, dtype=np.float32)
    if dmax <= 0:
        return out
    step = dta_mm / 5.0 if step_mm is None else float(step_mm)
    radius = max_gamma * dta_mm
    offsets = search_offsets(spacing, radius, step)
    sp = np.asarray(spacing, dtype=np.float64)
    pad = [int(math.ceil(radius / s)) + 1 for s in sp]
    evp = np.pad(ev, [(p, p) for p in pad], mode="edge")
    strides = np.array([evp.shape[1] * evp.shape[2], evp.shape[2], 1], dtype=np.int64)
    pts = np.flatnonzero(ref >= thr)
    zyx = np.stack(np.unravel_index(pts, ref.shape), -1)
    pidx = ((zyx + np.array(pad)) * strides).sum(1)  # padded flat index of each point
    ref_pts = ref.ravel()[pts]
    evf = evp.ravel()
    best = np.full(pts.size, np.inf)
    active = np.arange(pts.size)
    inv_dta2, inv_dd2 = 1.0 / dta_mm ** 2, 1.0 / dd ** 2
    last_d2 = -1.0
    for s in offsets:
        d2 = float((s ** 2).sum()) * inv_dta2
        if d2 > last_d2:  # new shell: drop voxels no longer offset can improve
            active = active[best[active] > d2]
            last_d2 = d2
            if active.size == 0:
                break
        f = s / sp
        i0 = np.floor(f).astype(np.int64)
        w = f - i0
        val = np.zeros(active.size)
        base = pidx[active]
        for c in ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)):
            wt = 1.0
            for k in range(3):
                wt *= w[k] if c[k] else 1.0 - w[k]
            if wt <= 1e-12:
                continue
            val += wt * evf[base + int(((i0 + c) * strides).sum())]
        g2 = d2 + (val - ref_pts[active]) ** 2 * inv_dd2
        best[active] = np.minimum(best[active], g2)
    g = np.sqrt(best)
    g[best > max_gamma ** 2 * (1 + 1e-12)] = np.inf
    out.ravel()[pts] = g
    return out


def gamma_index_ref(reference: np.ndarray, evaluation: np.ndarray, spacing: Sequence[float], *,
                    dose_percent: float = 3.0, dta_mm: float = 3.0, cutoff_percent: float = 10.0,
                    max_gamma: float = 1.0, step_mm: float | None = None,
                    reference_max: float | None = None) -> np.ndarray:
    """Plain reference of :func:`gamma_index` (same signature and result; every offset, whole grid)."""
    from scipy.ndimage import map_coordinates

    ref, ev, dmax, dd, thr = _setup(reference, evaluation, dose_percent, cutoff_percent, reference_max)
    out = np.full(ref.shape, np.nan, dtype=np.float32)
    if dmax <= 0:
        return out
    step = dta_mm / 5.0 if step_mm is None else float(step_mm)
    sp = np.asarray(spacing, dtype=np.float64)
    grid = np.indices(ref.shape).astype(np.float64)
    best = np.full(ref.shape, np.inf)
    for s in search_offsets(spacing, max_gamma * dta_mm, step):
        coords = grid + (s / sp)[:, None, None, None]
        val = map_coordinates(ev, coords, order=1, mode="nearest")
        g2 = (s ** 2).sum() / dta_mm ** 2 + (val - ref) ** 2 / dd ** 2
        best = np.minimum(best, g2)
    g = np.sqrt(best)
    g[best > max_gamma ** 2 * (1 + 1e-12)] = np.inf
    mask = ref >= thr
    out[mask] = g[mask]
    return out


def pass_rate(gamma: np.ndarray) -> float:
    """Fraction (0–1) of evaluated voxels (not NaN) with γ ≤ 1; NaN if none was evaluated."""
    g = np.asarray(gamma)
    valid = ~np.isnan(g)
    n = int(valid.sum())
    return float(np.count_nonzero(g[valid] <= 1.0) / n) if n else math.nan


def gamma_pass_rate(reference: np.ndarray, evaluation: np.ndarray, spacing: Sequence[float],
                    **kwargs) -> float:
    """Gamma pass rate (0–1) with :func:`gamma_index` (default 3 %/3 mm global, 10 % cutoff)."""
    return pass_rate(gamma_index(reference, evaluation, spacing, **kwargs))
