"""Publication-style figures of predicted doses (the paper's Fig. 2 and Fig. 3), drawn with matplotlib (Agg).

* :func:`dose_error_figure` — rows = axial slices; columns = ground truth, each method's dose, each
  method's error map (prediction − ground truth). All dose panels share one colour scale
  (0 … max reference dose), all error panels one symmetric diverging scale; the CT is drawn underneath in grey.
* :func:`dvh_figure` — cumulative DVH curves per ROI: ground truth solid, predictions dashed/dotted,
  one colour per ROI.
* :func:`score_boxplot` — box plots of per-patient scores by method (one panel per score).
* :func:`default_slices` — good axial slices to show: the target's centre and slices either side of it.
* :func:`figure_data_uri` — a Figure as a base64 PNG for self-contained HTML.

The curves are :func:`mddose.evaluate.dvh.cumulative_dvh`; the HTML report's slice-viewer frames are drawn
without matplotlib figures, in :mod:`mddose.evaluate.report.frames`.

The figure functions take plain NumPy arrays in the patient contract's ``(Z, Y, X)`` order, draw on a
:class:`matplotlib.figure.Figure` with its own Agg canvas (no pyplot, no global backend change), write the
PNG atomically when ``out_path`` is given and return the Figure for inspection. Images carry a ``gid``
(``"ct"``, ``"dose"``, ``"error"``) so that callers and tests can find them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mddose.errors import MddoseError
from mddose.evaluate.dvh import cumulative_dvh
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
#: markers added to the line styles from the sixth method on, so that every method stays distinguishable
METHOD_MARKERS = ("o", "s", "^", "v", "D", "x")


def method_style(j: int, n_points: int = 400) -> dict:
    """Matplotlib line keywords of the ``j``-th predicted method (0-based): a dash pattern for the first
    five, then the same patterns with a marker (every ``n_points // 10`` points) — 35 distinct styles.

    Raises:
        MddoseError: more methods than distinct styles.
    """
    n_styles, n_markers = len(METHOD_STYLES), len(METHOD_MARKERS)
    if not 0 <= j < n_styles * (n_markers + 1):
        raise MddoseError(f"method style {j}: at most {n_styles * (n_markers + 1)} methods per DVH figure")
    style = {"ls": METHOD_STYLES[j % n_styles]}
    if j >= n_styles:
        style.update(marker=METHOD_MARKERS[j // n_styles - 1], markevery=max(n_points // 10, 1),
                     markersize=3.5)
    return style


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
                ax.set_title(_panel_title(title, panel_inches), fontsize=9)
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
                ax.set_title(_panel_title(f"{n} − GT", panel_inches), fontsize=9)
        axes[i, 0].set_ylabel(f"slice {s}", fontsize=9)
    fig.colorbar(dose_im, ax=axes[:, :1 + len(names)].ravel().tolist(), location="bottom", shrink=0.6,
                 aspect=30, label="Dose (Gy)")
    fig.colorbar(err_im, ax=axes[:, 1 + len(names):].ravel().tolist(), location="bottom", shrink=0.8,
                 aspect=20, label="Error (Gy)", extend="both")
    if out_path is not None:
        save_figure(fig, out_path)
    return fig


def _panel_title(text: str, panel_inches: float) -> str:
    """``text`` wrapped to the width of one panel (long method names would run into the next panel)."""
    import textwrap

    return textwrap.fill(text, width=max(int(panel_inches * 12), 12), break_long_words=True, break_on_hyphens=False)


# ---------------------------------------------------------------------------------------------- Fig. 3
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
        line, = ax.plot(bins, 100 * cumulative_dvh(reference[m], bins), color=colour, lw=1.6, ls="-")
        line.set_gid(f"gt|{name}")
        for j, (method, p) in enumerate(preds.items()):
            pl, = ax.plot(bins, 100 * cumulative_dvh(p[m], bins), color=colour, lw=1.4,
                          **method_style(j, n_bins))
            pl.set_gid(f"{method}|{name}")
        label = name if voxel_volume is None else f"{name} ({m.sum() * voxel_volume:.1f} cc)"
        roi_handles.append(Line2D([], [], color=colour, lw=2, label=label))
    style_handles = [Line2D([], [], color="black", ls="-", label="Ground truth")] + [
        Line2D([], [], color="black", label=m, **{k: v for k, v in method_style(j, n_bins).items() if k != "markevery"})
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


def score_boxplot(scores: Mapping[str, Mapping[str, Mapping[str, float]]], out_path: str | os.PathLike | None = None,
                  *, dpi: int = 100):
    """Box plots of per-patient scores by method, one panel per score, each patient a dot over its box.

    Args:
        scores: score label → method → {patient: value} (e.g. ``{"Dose score (Gy)": {"MD-Dose": {...}}}``).
    Returns:
        The Figure (``fig.axes[i]`` is score ``i``; the boxes' artists carry ``gid`` = the method name).
    """
    labels = [k for k, v in scores.items() if any(len(x) for x in v.values())]
    if not labels:
        raise MddoseError("score_boxplot: no scores to draw")
    methods = list(dict.fromkeys(m for k in labels for m in scores[k]))
    fig = _new_figure(max(4.0, 1.1 * len(methods) + 1.5) * len(labels), 3.8, dpi=dpi)
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    rng = np.random.default_rng(0)                      # jitter of the dots only
    for ax, label in zip(axes, labels):
        data = [np.array([v for v in scores[label].get(m, {}).values() if np.isfinite(v)]) for m in methods]
        keep = [i for i, d in enumerate(data) if d.size]
        box = ax.boxplot([data[i] for i in keep], positions=[i + 1 for i in keep], widths=0.55, showfliers=False,
                         patch_artist=True)
        for i, patch in zip(keep, box["boxes"]):
            patch.set(facecolor="#cfe2f3", edgecolor="#2b5d8a", gid=methods[i])
        for i in keep:
            ax.plot(i + 1 + rng.uniform(-0.12, 0.12, data[i].size), data[i], "o", ms=3.5, color="#333", alpha=0.7)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(0.4, len(methods) + 0.6)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    if out_path is not None:
        save_figure(fig, out_path)
    return fig


def figure_data_uri(fig, dpi: int | None = None) -> str:
    """A Figure as a base64 PNG ``data:`` URI (for self-contained HTML)."""
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, facecolor="white", bbox_inches="tight", pad_inches=0.1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
