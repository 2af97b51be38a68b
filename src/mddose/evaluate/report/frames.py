"""Pre-rendered axial frames of the HTML report's slice viewer, composited with NumPy (no matplotlib figure).

* :func:`viewer_frames` — every frame of one patient (CT in grey with the prediction, ground truth, error
  and, when given, uncertainty over it, side by side), as ``data:`` URIs with labels and colour scales.
* :func:`viewer_panels` — one composited slice; :func:`encode_image` — RGB → JPEG/PNG ``data:`` URI;
  :func:`colormap_stops` — CSS colours of a colour map for the HTML colour bars.

The colour maps, CT window and robust error limit are the publication figures' (:mod:`mddose.evaluate.figures`),
so that the viewer and the figures look alike.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mddose.errors import MddoseError
from mddose.evaluate.figures import CT_WINDOW, DOSE_CMAP, ERROR_CMAP, robust_limit


def _colorize(values: np.ndarray, cmap_name: str, lo: float, hi: float) -> np.ndarray:
    """(H, W) values → (H, W, 3) float RGB in [0, 1] through a matplotlib colour map."""
    from matplotlib import colormaps

    t = np.clip((values - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    return colormaps[cmap_name](t)[..., :3]


def colormap_stops(cmap_name: str, n: int = 9) -> list[str]:
    """``n`` evenly spaced colours of a colour map as CSS ``rgb(...)`` strings (for HTML colour bars)."""
    from matplotlib import colormaps

    rgba = colormaps[cmap_name](np.linspace(0.0, 1.0, n))
    return [f"rgb({int(r * 255)},{int(g * 255)},{int(b * 255)})" for r, g, b, _ in rgba]


def _outline(mask2d: np.ndarray) -> np.ndarray:
    """(H, W) bool → the mask's boundary pixels (4-neighbourhood)."""
    m = np.pad(mask2d, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask2d & ~inner


def viewer_panels(ct2d: np.ndarray, layers: Sequence[tuple],
                  *, ct_window: tuple[float, float] = CT_WINDOW, outline: np.ndarray | None = None,
                  outline_panels: Sequence[bool] | None = None, alpha: float = 0.7, gap: int = 2) -> np.ndarray:
    """Composite one slice: panels side by side, each the CT in grey with one layer over it.

    Args:
        ct2d: (H, W) HU.
        layers: per panel ``(values (H, W) or None, colour map, low, high[, show (H, W) bool])``: the
            layer covers the ``show`` voxels; without ``show``, voxels whose value lies within 2 % of the
            range around ``low`` (for diverging maps: around 0) are left transparent.
        outline: (H, W) bool drawn in white (e.g. the target's contour) on the panels flagged in
            ``outline_panels`` (default: every panel).
        gap: dark pixels between panels.

    Returns:
        (H, P·W + (P−1)·gap, 3) uint8 RGB.
    """
    grey = np.clip((ct2d - ct_window[0]) / (ct_window[1] - ct_window[0]), 0.0, 1.0)
    base = np.repeat(grey[..., None], 3, axis=2)
    panels = []
    flags = list(outline_panels) if outline_panels is not None else [True] * len(layers)
    for layer, with_outline in zip(layers, flags):
        values, cmap, lo, hi = layer[:4]
        rgb = base.copy()
        if values is not None:
            zero = 0.0 if lo < 0 < hi else lo
            show = layer[4] if len(layer) > 4 else np.abs(values - zero) > 0.02 * (hi - lo)
            col = _colorize(values, cmap, lo, hi)
            rgb[show] = (1 - alpha) * rgb[show] + alpha * col[show]
        if outline is not None and with_outline:
            rgb[outline] = 1.0
        panels.append(rgb)
        panels.append(np.full((ct2d.shape[0], gap, 3), 0.1))
    return (np.concatenate(panels[:-1], axis=1) * 255 + 0.5).astype(np.uint8)


def encode_image(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 85) -> str:
    """(H, W, 3) uint8 → a ``data:`` URI (base64) of a JPEG or palette PNG."""
    import base64
    import io

    from PIL import Image

    img = Image.fromarray(rgb, mode="RGB")
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality, optimize=True)
        mime = "image/jpeg"
    elif fmt == "png":
        img.quantize(colors=256).save(buf, format="PNG", optimize=True)
        mime = "image/png"
    else:
        raise MddoseError(f"encode_image: unknown format {fmt!r} (jpeg or png)")
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def viewer_frames(patient, prediction: np.ndarray, std: np.ndarray | None = None, *,
                  max_px: int = 160, max_frames: int = 64, fmt: str = "jpeg") -> dict:
    """Pre-rendered axial frames of one patient (a :class:`mddose.data.patient.Patient`) for the HTML viewer.

    Only slices with dose (reference or prediction above 1 % of its maximum) are kept, at most
    ``max_frames`` (evenly strided). In-plane the frames are cropped to the dose region and
    possible-dose mask (plus a margin), strided down to at most ``max_px`` pixels, and small crops are
    enlarged by an integer factor (nearest neighbour) to about ``max_px`` pixels.

    Returns:
        ``{"src": [data URI], "label": [str], "start": int, "panels": [(title, cmap, lo, hi, unit)],
        "aspect": float (width / height of the image)}``.
    """
    ref = patient.dose
    vmax = float(ref.max()) if ref is not None and ref.size else float(prediction.max())
    vmax = vmax or 1.0
    dose_region = np.zeros(patient.shape, dtype=bool)
    for vol in (ref, prediction):
        if vol is not None:
            dose_region |= vol > 0.01 * vmax
    level = dose_region.reshape(patient.shape[0], -1).any(1)
    zs = np.flatnonzero(level) if level.any() else np.arange(patient.shape[0])
    if zs.size > max_frames:
        zs = zs[np.linspace(0, zs.size - 1, max_frames).round().astype(int)]
    region2d = dose_region.any(0)
    if patient.possible_dose_mask is not None:
        region2d |= patient.possible_dose_mask.any(0)
    rows, cols = slice(None), slice(None)
    if region2d.any():
        r, c = np.flatnonzero(region2d.any(1)), np.flatnonzero(region2d.any(0))
        rows = slice(max(r[0] - 4, 0), min(r[-1] + 5, patient.shape[1]))
        cols = slice(max(c[0] - 4, 0), min(c[-1] + 5, patient.shape[2]))
    ny, nx = len(range(patient.shape[1])[rows]), len(range(patient.shape[2])[cols])
    step = max(1, math.ceil(max(ny, nx) / max_px))
    ny, nx = len(range(0, ny, step)), len(range(0, nx, step))
    zoom = max(1, max_px // max(ny, nx))
    rows = slice(rows.start, rows.stop, step)
    cols = slice(cols.start, cols.stop, step)
    panels = [("Prediction", DOSE_CMAP, 0.0, vmax, "Gy")]
    err = None
    if ref is not None:
        panels.append(("Ground truth", DOSE_CMAP, 0.0, vmax, "Gy"))
        err = prediction - ref
        region = patient.dose_mask()
        lim = robust_limit(np.abs(err[region]))
        panels.append(("Error (prediction − GT)", ERROR_CMAP, -(lim or 1.0), lim or 1.0, "Gy"))
    if std is not None:
        panels.append(("Uncertainty (σ)", "magma", 0.0, robust_limit(std[patient.dose_mask()]) or 1.0, "Gy"))
    target = np.zeros(patient.shape, dtype=bool)
    for t in patient.targets:
        target |= patient.masks[t]
    src, labels = [], []
    for z in zs:
        sl = (int(z), rows, cols)
        vols = [prediction] + ([ref, err] if ref is not None else []) + ([std] if std is not None else [])
        layers = [(v[sl], cmap, lo, hi) for v, (_, cmap, lo, hi, _) in zip(vols, panels)]
        if err is not None:  # the error is shown over the whole dose region, zero included (white)
            layers[2] = layers[2] + (dose_region[sl],)
        frame = viewer_panels(patient.ct[sl], layers, outline=_outline(target[sl]) if target.any() else None,
                              outline_panels=[p[1] == DOSE_CMAP for p in panels])
        if zoom > 1:
            frame = np.repeat(np.repeat(frame, zoom, axis=0), zoom, axis=1)
        src.append(encode_image(frame, fmt=fmt))
        pos = patient.origin[2] + float(patient.direction[2, 2]) * patient.spacing[0] * int(z)
        labels.append(f"slice {int(z)} of {patient.shape[0]} (z = {pos:.1f} mm)")
    centre = int(np.rint(np.mean(np.nonzero(target)[0]))) if target.any() else int(zs[len(zs) // 2])
    start = int(np.argmin(np.abs(zs - centre)))
    h = ny * patient.spacing[1]
    w = nx * patient.spacing[2] * len(panels)
    return {"src": src, "label": labels, "start": start, "panels": panels, "aspect": w / h}
