"""Publication-style figures of predicted doses (the paper's Fig. 2 and Fig. 3), drawn with matplotlib (Agg).

* :func:`dose_error_figure` — rows = axial slices; columns = ground truth, each method's dose, each
  method's error map (prediction − ground truth). All dose panels share one colour scale
  (0 … max reference dose), all error panels one symmetric diverging scale; the CT is drawn underneath in grey.
* :func:`dvh_figure` — cumulative DVH curves per ROI: ground truth solid, predictions dashed/dotted,
  one colour per ROI.
* :func:`default_slices` — good axial slices to show: the target's centre and slices either side of it.
* :func:`cumulative_dvh` — the DVH curve itself (fraction of ROI voxels receiving ≥ d Gy).
* :func:`viewer_frames` / :func:`viewer_panels` / :func:`encode_image` — small pre-rendered axial frames
  (CT in grey with dose, error and uncertainty over it, composited with NumPy) for the HTML report's slice viewer.

The figure functions take plain NumPy arrays in the patient contract's ``(Z, Y, X)`` order, draw on a
:class:`matplotlib.figure.Figure` with its own Agg canvas (no pyplot, no global backend change), write the
PNG atomically when ``out_path`` is given and return the Figure for inspection. Images carry a ``gid``
(``"ct"``, ``"dose"``, ``"error"``) so that callers and tests can find them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mddose.errors import MddoseError
from mddose.utils.fs import atomic_save

#: Colour map of doses (the radiotherapy convention).
DOSE_CMAP = "jet"
#: Diverging colour map of errors (blue: prediction too low, red: too high).
ERROR_CMAP = "RdBu_r"
#: Default CT display window in HU.
CT_WINDOW = (-1000.0, 1000.0)
#: Doses below this fraction of the colour-scale maximum are drawn transparent (the CT shows through).
DOSE_THRESHOLD = 0.03
#: Percentile of |error| that sets the default half-range of error colour scales (larger errors saturate).
ERROR_PERCENTILE = 99.0
#: Line styles of predicted DVH curves, one per method (ground truth is solid).
METHOD_STYLES = ("--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))


# ---------------------------------------------------------------------------------------------- helpers
def _new_figure(width: float, height: float, dpi: int = 100):
    """A Figure with an Agg canvas and constrained layout (independent of pyplot's state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out_path: str | os.PathLike, dpi: int | None = None) -> Path:
    """Write ``fig`` as PNG to ``out_path`` atomically (temporary sibling, then rename)."""
    return atomic_save(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi or fig.dpi,
                                                          facecolor="white", bbox_inches="tight",
                                                          pad_inches=0.1))


def _check_volume(name: str, arr, shape: tuple[int, ...] | None = None) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim != 3:
        raise MddoseError(f"{name}: expected a 3D (Z, Y, X) array, got shape {a.shape}")
    if shape is not None and a.shape != tuple(shape):
        raise MddoseError(f"{name}: shape {a.shape} differs from the reference {tuple(shape)}")
    return a


def robust_limit(abs_values: np.ndarray, percentile: float = ERROR_PERCENTILE) -> float:
    """Half-range of a symmetric error scale: the ``percentile`` of ``abs_values`` (0 if empty)."""
    a = np.asarray(abs_values, dtype=np.float64).ravel()
    return float(np.percentile(a, percentile)) if a.size else 0.0


def default_slices(target: np.ndarray | None = None, dose: np.ndarray | None = None, n: int = 3,
                   spread: float = 0.5) -> list[int]:
    """Axial slice indices to show, most superior first.

    Args:
        target: (Z, Y, X) bool, the target (e.g. the union of PTVs); its z-centroid is the centre slice.
        dose: (Z, Y, X) Gy, used when there is no target (dose-weighted z-centroid).
        n: number of slices (≥ 1).
        spread: the outer slices lie ``spread`` × half the target's z-extent from the centre.

    Returns:
        Up to ``n`` distinct indices in ``[0, Z)``, sorted descending.
    """
    ref = target if target is not None else dose
    if ref is None:
        raise MddoseError("default_slices: give a target mask or a dose")
    nz = ref.shape[0]
    if target is not None and np.any(target):
        per_slice = np.asarray(target, dtype=bool).reshape(nz, -1).sum(1).astype(np.float64)
    elif dose is not None and np.any(dose > 0):
        per_slice = np.asarray(dose, dtype=np.float64).reshape(nz, -1).sum(1)
    else:
        return [nz // 2]
    zs = np.arange(nz)
    centre = float((per_slice * zs).sum() / per_slice.sum())
    nonzero = zs[per_slice > 0]
    half = max((nonzero[-1] - nonzero[0]) / 2.0, 1.0)
    offsets = np.linspace(-spread * half, spread * half, n) if n > 1 else np.zeros(1)
    picks = np.clip(np.rint(centre + offsets), 0, nz - 1).astype(int)
    return sorted({int(p) for p in picks}, reverse=True)


def _crop_box(volumes: Sequence[np.ndarray], slices: Sequence[int], margin: int = 6,
              threshold: float = 0.0) -> tuple[slice, slice]:
    """(rows, cols) slices of the bounding box of voxels > threshold over ``slices``, plus a margin."""
    ny, nx = volumes[0].shape[1:]
    region = np.zeros((ny, nx), dtype=bool)
    for v in volumes:
        region |= np.any(v[list(slices)] > threshold, axis=0)
    if not region.any():
        return slice(0, ny), slice(0, nx)
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, ny)),
            slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, nx)))


def _show_ct(ax, ct2d: np.ndarray, window: tuple[float, float], aspect: float) -> None:
    im = ax.imshow(ct2d, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect,
                   interpolation="nearest")
    im.set_gid("ct")
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------------------------------- Fig. 2
def dose_error_figure(ct: np.ndarray, reference: np.ndarray, predictions: Mapping[str, np.ndarray],
                      slices: Sequence[int] | None = None, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                      out_path: str | os.PathLike | None = None, *, ct_window: tuple[float, float] = CT_WINDOW,
                      error_limit: float | None = None, crop: bool = True, target: np.ndarray | None = None,
                      panel_inches: float = 2.2, dpi: int = 100):
    """Dose maps of several methods against the ground truth on axial slices (like the paper's Fig. 2).

    Args:
        ct: (Z, Y, X) HU, drawn in grey under every panel.
        reference: (Z, Y, X) Gy, ground-truth dose.
        predictions: method name → (Z, Y, X) Gy predicted dose (at least one).
        slices: axial indices (rows); default :func:`default_slices` of ``target`` (or the reference dose).
        spacing: (sz, sy, sx) mm; sets the pixel aspect ratio.
        out_path: write the PNG here (atomically) when given.
        ct_window: (low, high) HU display window.
        error_limit: half-range (Gy) of the shared error scale; default :func:`robust_limit` of
            |prediction − reference| on the shown slices inside the dose region (larger errors saturate).
        crop: crop the panels to the dose region (plus a margin).
        target: (Z, Y, X) bool, only used to choose default slices.

    Returns:
        The Figure; dose images share one ``Normalize(0, max reference)``, error images one symmetric norm.
    """
    from matplotlib.colors import Normalize

    reference = _check_volume("reference dose", reference)
    ct = _check_volume("CT", ct, reference.shape)
    if not predictions:
        raise MddoseError("dose_error_figure: no prediction given")
    preds = {str(k): _check_volume(f"prediction {k!r}", v, reference.shape) for k, v in predictions.items()}
    if slices is None:
        slices = default_slices(target, reference)
    slices = [int(s) for s in slices]
    if not slices or any(not 0 <= s < reference.shape[0] for s in slices):
        raise MddoseError(f"dose_error_figure: slices {slices} outside [0, {reference.shape[0]})")

    vmax = float(reference.max()) or 1.0
    dose_norm = Normalize(vmin=0.0, vmax=vmax)
    thr = DOSE_THRESHOLD * vmax
    rows, cols = _crop_box([reference, *preds.values()], slices, threshold=thr) if crop else (
        slice(None), slice(None))
    region = [(reference[s] > thr) | np.any([p[s] > thr for p in preds.values()], axis=0) for s in slices]
    if error_limit is None:
        errs = np.concatenate([np.abs(p[s] - reference[s])[r] for p in preds.values()
                               for s, r in zip(slices, region)])
        error_limit = robust_limit(errs)
    error_limit = float(error_limit) or 1.0
    error_norm = Normalize(vmin=-error_limit, vmax=error_limit)

    names = list(preds)
    ncols = 1 + 2 * len(names)
    aspect = float(spacing[1]) / float(spacing[2])
    height, width = reference[0][rows, cols].shape
    panel_h = panel_inches * min(max(height * aspect / width, 0.4), 2.0)
    fig = _new_figure(panel_inches * ncols, (panel_h + 0.1) * len(slices) + 1.0, dpi=dpi)
    axes = fig.subplots(len(slices), ncols, squeeze=False)
    dose_im = err_im = None
    for i, (s, reg) in enumerate(zip(slices, region)):
        ct2d = ct[s][rows, cols]
        dose_panels = [("Ground truth", reference[s])] + [(n, preds[n][s]) for n in names]
        for j, (title, d) in enumerate(dose_panels):
            ax = axes[i, j]
            _show_ct(ax, ct2d, ct_window, aspect)
            dose_im = ax.imshow(np.ma.masked_less(d[rows, cols], thr), cmap=DOSE_CMAP, norm=dose_norm,
                                alpha=0.75, aspect=aspect, interpolation="nearest")
            dose_im.set_gid("dose")
            if i == 0:
                ax.set_title(title, fontsize=10)
        for j, n in enumerate(names):
            ax = axes[i, 1 + len(names) + j]
            _show_ct(ax, ct2d, ct_window, aspect)
            err = preds[n][s] - reference[s]
            err_im = ax.imshow(np.ma.masked_where(~reg[rows, cols], err[rows, cols]), cmap=ERROR_CMAP,
                               norm=error_norm, alpha=0.9, aspect=aspect, interpolation="nearest")
            err_im.set_gid("error")
            mae = float(np.abs(err[reg]).mean()) if reg.any() else 0.0
            ax.text(0.03, 0.04, f"MAE {mae:.2f} Gy", transform=ax.transAxes, fontsize=7, color="black",
                    bbox=dict(facecolor="white", alpha=0.7, pad=1.5, linewidth=0))
            if i == 0:
                ax.set_title(f"{n} − GT", fontsize=10)
        axes[i, 0].set_ylabel(f"slice {s}", fontsize=9)
    fig.colorbar(dose_im, ax=axes[:, :1 + len(names)].ravel().tolist(), location="bottom", shrink=0.6,
                 aspect=30, label="Dose (Gy)")
    fig.colorbar(err_im, ax=axes[:, 1 + len(names):].ravel().tolist(), location="bottom", shrink=0.8,
                 aspect=20, label="Error (Gy)", extend="both")
    if out_path is not None:
        save_figure(fig, out_path)
    return fig


# ---------------------------------------------------------------------------------------------- Fig. 3
def cumulative_dvh(dose: np.ndarray, mask: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Cumulative DVH: fraction of the ROI's voxels receiving at least each dose.

    Args:
        dose: (Z, Y, X) Gy.
        mask: (Z, Y, X) bool ROI.
        bins: (B,) doses in Gy.

    Returns:
        (B,) float64 in [0, 1]; NaN everywhere if the ROI is empty.
    """
    values = np.sort(np.asarray(dose, dtype=np.float64)[np.asarray(mask, dtype=bool)])
    bins = np.asarray(bins, dtype=np.float64)
    if values.size == 0:
        return np.full(bins.shape, np.nan)
    return 1.0 - np.searchsorted(values, bins, side="left") / values.size


def dvh_figure(reference: np.ndarray, predictions: Mapping[str, np.ndarray] | np.ndarray,
               masks: Mapping[str, np.ndarray], voxel_volume: float | None = None,
               out_path: str | os.PathLike | None = None, *, max_dose: float | None = None,
               n_bins: int = 400, title: str | None = None, dpi: int = 100):
    """Cumulative DVH curves of the prediction(s) against the ground truth per ROI (like the paper's Fig. 3).

    Args:
        reference: (Z, Y, X) Gy ground truth (solid lines).
        predictions: method name → (Z, Y, X) Gy, or one array (named "Prediction"); dashed/dotted lines.
        masks: ROI name → (Z, Y, X) bool; one colour per ROI; empty ROIs are left out.
        voxel_volume: cc per voxel; when given the legend shows each ROI's volume.
        out_path: write the PNG here (atomically) when given.
        max_dose: right end of the dose axis (default 1.05 × the highest dose).
        n_bins: number of dose points per curve.

    Returns:
        The Figure (one Axes; ``fig.axes[0].lines`` holds the curves, volume in percent).
    """
    from matplotlib.lines import Line2D

    reference = _check_volume("reference dose", reference)
    if isinstance(predictions, np.ndarray):
        predictions = {"Prediction": predictions}
    preds = {str(k): _check_volume(f"prediction {k!r}", v, reference.shape) for k, v in predictions.items()}
    rois = {str(k): np.asarray(m, dtype=bool) for k, m in masks.items() if np.any(m)}
    if not rois:
        raise MddoseError("dvh_figure: every ROI mask is empty")
    for k, m in rois.items():
        if m.shape != reference.shape:
            raise MddoseError(f"dvh_figure: mask {k!r} has shape {m.shape}, dose has {reference.shape}")
    if max_dose is None:
        top = max([float(reference.max())] + [float(p.max()) for p in preds.values()])
        max_dose = 1.05 * top or 1.0
    bins = np.linspace(0.0, float(max_dose), n_bins)

    from matplotlib import colormaps
    cmap = colormaps["tab10" if len(rois) <= 10 else "tab20"]
    fig = _new_figure(7.5, 4.8, dpi=dpi)
    ax = fig.subplots()
    roi_handles = []
    for i, (name, m) in enumerate(rois.items()):
        colour = cmap(i % cmap.N)
        line, = ax.plot(bins, 100 * cumulative_dvh(reference, m, bins), color=colour, lw=1.6, ls="-")
        line.set_gid(f"gt|{name}")
        for j, (method, p) in enumerate(preds.items()):
            pl, = ax.plot(bins, 100 * cumulative_dvh(p, m, bins), color=colour, lw=1.4,
                          ls=METHOD_STYLES[j % len(METHOD_STYLES)])
            pl.set_gid(f"{method}|{name}")
        label = name if voxel_volume is None else f"{name} ({m.sum() * voxel_volume:.1f} cc)"
        roi_handles.append(Line2D([], [], color=colour, lw=2, label=label))
    style_handles = [Line2D([], [], color="black", ls="-", label="Ground truth")] + [
        Line2D([], [], color="black", ls=METHOD_STYLES[j % len(METHOD_STYLES)], label=m)
        for j, m in enumerate(preds)]
    ax.set_xlim(0, float(max_dose))
    ax.set_ylim(0, 102)
    ax.set_xlabel("Dose (Gy)")
    ax.set_ylabel("Volume (%)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(handles=roi_handles + style_handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize=8, frameon=False)
    if out_path is not None:
        save_figure(fig, out_path)
    return fig


# ---------------------------------------------------------------------------------------------- viewer frames
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


def figure_data_uri(fig, dpi: int | None = None) -> str:
    """A Figure as a base64 PNG ``data:`` URI (for self-contained HTML)."""
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, facecolor="white", bbox_inches="tight", pad_inches=0.1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
