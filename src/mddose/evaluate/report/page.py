"""The report's HTML: score tables, one section per patient, and the page around them.

The page skeleton (``page.html``), its styles (``report.css``) and the slider script (``viewer.js``) are
package files of :mod:`mddose.evaluate.report`, read with :mod:`importlib.resources` and inlined, so that
the report stays one offline file.
"""

from __future__ import annotations

import html
import json
import math
import re
import string
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mddose.data.patient import Patient

#: Summary keys not shown in the summary table (per-patient values, shown in the per-patient table).
SUMMARY_HIDDEN = ("dvh_metrics_prediction", "dvh_metrics_reference", "dose_error_per_patient", "patients")


def asset(name: str) -> str:
    """The text of one of the report's package files (``page.html``, ``report.css``, ``viewer.js``)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")  # this package's files


def render_page(title: str, body: Sequence[str]) -> str:
    """The whole HTML document: ``page.html`` with the title, the CSS, the body parts and the script."""
    return string.Template(asset("page.html")).substitute(
        title=html.escape(title), css=asset("report.css").strip(), body="\n".join(body), js=asset("viewer.js").strip())


def fmt(value) -> str:
    """A table cell: numbers with 3 decimals, ``—`` for empty or non-finite values, text escaped."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return html.escape(str(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        f = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if isinstance(value, str) and not re.fullmatch(r"\s*[-+0-9.eE]+\s*|nan|inf", value.strip().lower()):
        return html.escape(value)
    return "—" if not math.isfinite(f) else f"{f:.3f}"


def _flatten(d, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in (d.items() if isinstance(d, Mapping) else []):
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += _flatten(v, key + ".")
        elif isinstance(v, (list, tuple)):
            out.append((key, json.dumps(v)[:200]))
        else:
            out.append((key, v))
    return out


def table(rows: Sequence[Mapping], cls: str = "") -> str:
    """A scrollable HTML table of ``rows`` (columns: union over rows, first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return (f'<div class="tablewrap"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table></div>")


def scores_html(summary: Mapping | None, rows: Sequence[Mapping] | None) -> str:
    """The Scores section: score cards, the summary as key/value table, the per-patient table."""
    parts = ["<h2 id='scores'>Scores</h2>"]
    flat = [(k, v) for k, v in _flatten(summary or {}) if k.split(".")[0] not in SUMMARY_HIDDEN
            and not (k.startswith("means.") and ":" in k)]
    cards = [(k, v) for k, v in flat if re.search(r"(dose|dvh)_score", k) and not isinstance(v, str)]
    if cards:
        parts.append('<div class="cards">' + "".join(
            f'<div class="card">{html.escape(k)}<b>{fmt(v)}</b></div>' for k, v in cards[:6]) + "</div>")
    if flat:
        parts.append("<h3>Summary</h3>" + table([{"key": k, "value": v} for k, v in flat], "kv"))
    if rows:
        parts.append("<h3>Per patient</h3>" + table(rows))
    return "\n".join(parts)


def _colorbar_html(title: str, cmap: str, lo: float, hi: float, unit: str) -> str:
    from mddose.evaluate.report.frames import colormap_stops

    grad = ",".join(colormap_stops(cmap))
    return (f'<span class="cbar">{html.escape(title)}: {lo:.1f}<span class="grad" '
            f'style="background:linear-gradient(to right,{grad})"></span>{hi:.1f} {html.escape(unit)}</span>')


def viewer_html(index: int, patient_id: str, frames: dict) -> str:
    """One slice viewer: captions, the frame, the slider, colour bars and the frames as JSON."""
    caps = "".join(f"<span>{html.escape(p[0])}</span>" for p in frames["panels"])
    bars = "".join(_colorbar_html(*p) for p in frames["panels"] if p[0] != "Ground truth")
    payload = json.dumps({"src": frames["src"], "label": frames["label"]}).replace("</", "<\\/")
    n = len(frames["src"])
    width = 260 * len(frames["panels"])
    return (f'<div class="viewer" id="viewer-{index}" data-patient="{html.escape(patient_id)}" '
            f'style="--w:{width}px"><div class="captions">{caps}</div>'
            f'<img class="frame" alt="axial slices of {html.escape(patient_id)}" src="{frames["src"][frames["start"]]}"'
            f' style="aspect-ratio:{frames["aspect"]:.4f}">'
            f'<div class="controls"><input type="range" class="slider" min="0" max="{n - 1}" '
            f'value="{frames["start"]}" aria-label="slice of {html.escape(patient_id)}">'
            f'<span class="zlabel"></span></div><div class="legends">{bars}'
            f'<span>white outline on doses: targets</span></div>'
            f'<script type="application/json" class="frames">{payload}</script></div>')


def patient_html(index: int, patient: Patient, prediction: np.ndarray, std: np.ndarray | None,
                 metrics: Mapping, figures_dir: Path | None, dpi: int) -> str:
    """One patient's section: its minimal metrics, the slice viewer and (with a reference dose) the dose/error
    and DVH figures, also written to ``figures_dir/<id>_{dose,dvh}.png`` when given (a patient's id is a
    safe file-name component, see :mod:`mddose.data.patient`)."""
    from mddose.evaluate.figures import default_slices, dose_error_figure, dvh_figure, figure_data_uri, save_figure
    from mddose.evaluate.report.frames import viewer_frames

    pid = patient.id
    line = ", ".join(f"{html.escape(k)} {fmt(v)}" for k, v in metrics.items() if k != "patient")
    parts = [f'<section class="patient" id="p-{index}"><h2>{html.escape(pid)}</h2><p>{line}</p>',
             viewer_html(index, pid, viewer_frames(patient, prediction, std))]
    if patient.dose is None:
        parts.append('<p class="note">No reference dose: figures and error maps left out.</p></section>')
        return "\n".join(parts)
    target = np.zeros(patient.shape, dtype=bool)
    for t in patient.targets:
        target |= patient.masks[t]
    slices = default_slices(target if target.any() else None, patient.dose)
    figs = [("dose", dose_error_figure(patient.ct, patient.dose, {"Prediction": prediction}, slices,
                                       patient.spacing, dpi=dpi),
             f"Dose maps and error (prediction − ground truth) on slices {slices}; shared colour scales."),
            ("dvh", dvh_figure(patient.dose, {"Prediction": prediction},
                               {n: m for n, m in patient.masks.items() if m.any()}, patient.voxel_volume_cc,
                               dpi=dpi, title=pid),
             "Cumulative DVH: ground truth solid, prediction dashed.")]
    parts.append('<div class="figs">')
    for kind, fig, caption in figs:
        if figures_dir is not None:
            save_figure(fig, figures_dir / f"{pid}_{kind}.png")
        parts.append(f'<figure><img alt="{kind} figure of {html.escape(pid)}" src="{figure_data_uri(fig)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</div></section>")
    return "\n".join(parts)
