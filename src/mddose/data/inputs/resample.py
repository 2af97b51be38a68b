"""Per-axis resampling of whole volumes (the 3D models' grid ↔ the patient's grid).

Each axis is resized independently (separable, every channel alike): **area** (box average of the input
voxels each output voxel covers, exact overlap weights, :func:`axis_weights`) along an axis that shrinks,
because point sampling would alias the CT texture and the dose's penumbrae; **linear**
(``align_corners=False``, voxel centres aligned) along an axis that grows. Equal lengths are left alone
(exact). The aspect ratio is not preserved, which is why :func:`check_spacing` requires a valid voxel
spacing whenever resampling happens.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from mddose.data.patient import Patient
from mddose.errors import MddoseError


def check_spacing(patient: Patient, size: int) -> None:
    """Raise unless the patient's spacing is three positive finite numbers (needed to resample)."""
    sp = getattr(patient, "spacing", None)
    try:
        vals = [float(s) for s in sp]  # type: ignore[union-attr]
        ok = len(vals) == 3 and all(math.isfinite(v) and v > 0 for v in vals)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise MddoseError(f"patient {patient.id}: cannot resample to the model's {size}³ grid: spacing must be "
                          f"three positive finite numbers (mm), got {sp!r}")


def axis_weights(m: int, n: int) -> torch.Tensor:
    """(m, n) float32 matrix resampling a length-``m`` axis to length ``n`` (column j = output voxel j).

    Shrinking: exact area weights, the overlap of input voxel i with output voxel j's footprint
    ``[j·m/n, (j+1)·m/n)`` (in input voxel widths) divided by its width — a box filter aligned with the
    voxel edges, unlike adaptive pooling's whole-voxel windows. Enlarging: linear interpolation at the
    output voxel centres ``(j + 0.5)·m/n − 0.5`` (``align_corners=False``), clamped at the ends.
    """
    r = m / n
    if n < m:
        lo = np.arange(n) * r
        edges = np.arange(m + 1, dtype=np.float64)
        w = np.minimum(edges[1:, None], lo[None] + r) - np.maximum(edges[:-1, None], lo[None])
        w = np.clip(w, 0.0, None) / r
    else:
        pos = np.clip((np.arange(n) + 0.5) * r - 0.5, 0.0, m - 1)
        i0 = np.minimum(np.floor(pos).astype(np.int64), m - 1)
        i1 = np.minimum(i0 + 1, m - 1)
        frac = pos - i0
        w = np.zeros((m, n))
        np.add.at(w, (i0, np.arange(n)), 1.0 - frac)
        np.add.at(w, (i1, np.arange(n)), frac)
    return torch.from_numpy(w.astype(np.float32))


def _resize_axis(t: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """Resize float tensor ``t`` along ``axis`` to length ``n`` with :func:`axis_weights`."""
    m = t.shape[axis]
    if m == n:
        return t
    w = axis_weights(m, n).to(t.device, t.dtype)
    moved = t.movedim(axis, -1).contiguous()
    out = (moved.reshape(-1, m) @ w).reshape(*moved.shape[:-1], n)  # one plain GEMM
    return out.movedim(-1, axis)


def resize_volume(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resize (C, Z, Y, X) float32 to (C, *shape), axis by axis (see the module docstring); exact if equal."""
    axes = sorted(range(3), key=lambda a: shape[a] - t.shape[1 + a])  # shrink first: less work
    for a in axes:
        t = _resize_axis(t, 1 + a, int(shape[a]))
    return t.contiguous()


def to_grid(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(C, …) float32 numpy resized to (C, *shape) float32 (no copy when already that shape)."""
    if a.shape[1:] == tuple(shape):
        return a
    return resize_volume(torch.from_numpy(a), shape).numpy()
