"""Build the report: read a prediction folder and its reference patients, score them, write one HTML file.

* :func:`report_run` — ``mddose report PRED``: the folder is read by the shared reader
  (:mod:`mddose.evaluate.predictions`, every format ``mddose predict`` writes, uncertainty maps from
  ``PRED/uncertainty/``); the scores come from ``PRED/evaluation/`` when ``mddose evaluate`` wrote them,
  else they are computed here.
* :func:`build_report` — the same from patients and arrays in memory.

Every item that fails (an unreadable reference patient or prediction, an uncertainty map that cannot be
read, a patient that cannot be scored or drawn), whatever the exception, is named in a note at the top of
the report and in :attr:`Report.failures`; the other patients are reported.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mddose.data.patient import Patient
from mddose.errors import MddoseError
from mddose.evaluate.predictions import (find_predictions, find_uncertainty, match_patients, natural_key,
                                         read_volume)
from mddose.evaluate.records import evaluate_arrays, failure
from mddose.evaluate.report.page import patient_html, render_page, scores_html
from mddose.utils.config import read_json_object
from mddose.utils.fs import atomic_write, check_new_output

log = logging.getLogger(__name__)

#: The file ``mddose predict`` writes into its output folder; its ``input`` names the reference data.
RUN_INFO = "predict.json"


@dataclass
class Report:
    """A written report: ``path`` and ``failures`` ``[(patient id or path, one-line message)]``."""

    path: Path
    failures: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- inputs
def load_evaluation(run_dir: str | Path) -> tuple[dict | None, list[dict] | None]:
    """``(summary.json, per_patient.csv rows)`` written by ``mddose evaluate`` into ``RUN_DIR/evaluation``;
    None for a file that is absent. A file that cannot be read is a one-line MddoseError."""
    base = Path(run_dir) / "evaluation"
    summary = rows = None
    if (base / "summary.json").exists():
        summary = read_json_object(base / "summary.json", "evaluation summary")
    if (base / "per_patient.csv").exists():
        try:
            with open(base / "per_patient.csv", newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise MddoseError(f"cannot read the per-patient table ({exc})", base / "per_patient.csv") from None
    return summary, rows


def _reference_from_run(run_dir: Path) -> Path:
    """The input data recorded by ``mddose predict`` in ``RUN_DIR/predict.json``."""
    info = run_dir / RUN_INFO
    if info.exists():
        meta = read_json_object(info, "run information")
        if isinstance(meta.get("input"), str) and Path(meta["input"]).exists():
            return Path(meta["input"])
    raise MddoseError(f"--reference: not given, and the run directory records no existing input data "
                      f"({RUN_INFO} with an 'input' path)", run_dir)


# ---------------------------------------------------------------------------------------------- metrics
def basic_metrics(patient: Patient, prediction: np.ndarray) -> dict:
    """Minimal per-patient scores: MAE (Gy) in the possible-dose mask, max doses, D95 of the highest target.

    Args:
        patient: with ``dose`` (the reference; if None only the predicted max is given). Without a
            possible-dose mask the MAE is left out (never averaged over the whole grid).
        prediction: (Z, Y, X) Gy.
    """
    row: dict = {"patient": patient.id, "max_pred_gy": float(prediction.max()) if prediction.size else 0.0}
    if patient.dose is None:
        return row
    mask = patient.possible_dose_mask
    if mask is not None:
        row["mae_gy"] = float(np.abs(prediction[mask] - patient.dose[mask]).mean()) if mask.any() else math.nan
    row["max_ref_gy"] = float(patient.dose.max())
    if patient.targets:
        t = patient.targets[0]
        m = patient.masks[t]
        if m.any():
            row[f"D95|{t} ref"] = float(np.percentile(patient.dose[m], 5))
            row[f"D95|{t} pred"] = float(np.percentile(prediction[m], 5))
    return row


def _computed_summary(rows: Sequence[dict]) -> dict:
    maes = [r["mae_gy"] for r in rows if isinstance(r.get("mae_gy"), float) and math.isfinite(r["mae_gy"])]
    out = {"source": "computed by mddose report (minimal metrics; run `mddose evaluate` for the full scores)",
           "patients": len(rows)}
    if maes:
        out["mean MAE in possible-dose mask (Gy)"] = float(np.mean(maes))
        out["MAE std (Gy)"] = float(np.std(maes))
    return out


def compute_scores(patients: Sequence[Patient], predictions: Mapping[str, np.ndarray], *,
                   full: bool = True) -> tuple[dict, list[dict], list[tuple[str, str]]]:
    """Score tables when the run has no ``evaluation/``: ``(summary, per-patient rows, failures)``.

    With ``full`` the OpenKBP and clinical scores of :func:`mddose.evaluate.records.evaluate_arrays`
    (patients that cannot be scored are the failures); when none can be scored, or without ``full``, the
    minimal :func:`basic_metrics`.
    """
    with_dose = [p for p in patients if p.dose is not None]
    failures: list[tuple[str, str]] = []
    if full and with_dose:
        res = evaluate_arrays(with_dose, {p.id: predictions[p.id] for p in with_dose})
        failures = list(res.errors)
        if res.records:
            summary = {"source": "computed by mddose report with mddose.evaluate (no RUN_DIR/evaluation)",
                       **res.summary()}
            return summary, res.rows(), failures
    rows = [basic_metrics(p, predictions[p.id]) for p in patients]
    return _computed_summary(rows), rows, failures


# ---------------------------------------------------------------------------------------------- report
def build_report(patients: Sequence[Patient], predictions: Mapping[str, np.ndarray], out: str | Path, *,
                 uncertainties: Mapping[str, np.ndarray] | None = None, summary: Mapping | None = None,
                 per_patient: Sequence[Mapping] | None = None, title: str = "mddose report",
                 notes: Sequence[str] = (), failures: Sequence[tuple[str, str]] = (),
                 max_patients: int | None = 20, figures_dir: str | Path | None = None, force: bool = False,
                 dpi: int = 80, full_scores: bool = True, progress: bool = False) -> Report:
    """Write the self-contained HTML report.

    Args:
        patients: reference patients (ct, masks, and ``dose`` = ground truth when known).
        predictions: patient id → (Z, Y, X) Gy predicted dose; patients without one are left out.
        out: the HTML file (written atomically; refused if it exists unless ``force``).
        uncertainties: patient id → (Z, Y, X) Gy standard deviation (optional viewer panel).
        summary, per_patient: score tables (``summary.json`` / ``per_patient.csv`` of ``mddose evaluate``);
            when ``per_patient`` is None they are computed (:func:`compute_scores`; ``full_scores=False``:
            only the minimal :func:`basic_metrics`); a given ``summary`` is kept.
        notes: lines shown at the top (the caller's failures among them).
        failures: items that already failed (returned in :attr:`Report.failures` with this call's).
        max_patients: per-patient sections (viewer, figures) for at most this many patients.
        figures_dir: also write the figures there as PNG files.
        progress: show a tqdm progress bar over the patients' sections.

    Returns:
        The :class:`Report`: the path written and every failed item (``failures`` and those of this call).
    """
    out = check_new_output(out, force)
    uncertainties = uncertainties or {}
    cases = [p for p in sorted(patients, key=lambda p: natural_key(p.id)) if p.id in predictions]
    if not cases:
        raise MddoseError("no patient has both reference data and a prediction", out)
    failures = list(failures)
    notes = list(notes)
    computed = per_patient is None
    if computed:
        computed_summary, per_patient, scored = compute_scores(cases, predictions, full=full_scores)
        summary = summary if summary is not None else computed_summary
        failures += scored
        notes += [f"not scored {i}: {m}" for i, m in scored]
    shown = cases if max_patients is None else cases[:max_patients]
    if len(shown) < len(cases):
        notes.append(f"Slice viewers and figures are shown for the first {len(shown)} of {len(cases)} patients.")
    fdir = Path(figures_dir) if figures_dir is not None else None
    sections = []
    items = enumerate(shown)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, total=len(shown), desc="report", unit="pt")
    for i, p in items:
        try:
            sections.append(patient_html(i, p, predictions[p.id], uncertainties.get(p.id),
                                         basic_metrics(p, predictions[p.id]), fdir, dpi))
        except Exception as exc:  # noqa: BLE001 - one patient that cannot be drawn never stops the report
            msg = failure(exc, p.meta.get("source"))
            log.warning("section of %s left out: %s", p.id, msg)
            failures.append((p.id, msg))
            notes.append(f"section of {p.id} left out: {msg}")
            sections.append(f'<section class="patient" id="p-{i}"><h2>{html.escape(p.id)}</h2>'
                            f'<p class="note">Left out: {html.escape(msg)}</p></section>')
    from mddose import __version__

    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    nav = "".join(f'<a href="#p-{i}">{html.escape(p.id)}</a>' for i, p in enumerate(shown))
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="meta">mddose {html.escape(__version__)} · {stamp} · {len(cases)} patient(s)'
            + (" · scores computed by the report" if computed else "") + "</p>",
            *[f'<p class="note">{html.escape(n)}</p>' for n in notes],
            f"<nav><a href='#scores'>Scores</a>{nav}</nav>",
            scores_html(summary, per_patient), *sections]
    with atomic_write(out, "wb") as fh:
        fh.write(render_page(title, body).encode("utf-8"))
    return Report(out, failures)


def report_run(run_dir: str | Path, reference: str | Path | None = None, out: str | Path | None = None, *,
               force: bool = False, max_patients: int | None = 20, figures_dir: str | Path | None = None,
               progress: bool = False) -> Report:
    """``mddose report``: read a prediction folder and its reference patients, write the HTML report.

    Args:
        run_dir: the prediction folder (``mddose predict``'s output).
        reference: the reference patients (default: the input recorded in ``RUN_DIR/predict.json``).
        out: the HTML file (default ``RUN_DIR/report.html``; refused if it exists unless ``force``).
    Returns:
        The :class:`Report` (failed items are also listed in the report).
    Raises:
        MddoseError when the folder holds no prediction or no prediction can be read for a reference patient.
    """
    run_dir = Path(run_dir)
    folder = find_predictions(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    check_new_output(out, force)
    reference = Path(reference) if reference is not None else _reference_from_run(run_dir)
    from mddose.data.io import load_patients

    patients, failures = load_patients(reference, progress=progress)
    failures = list(failures)
    pairs, missing, refused = match_patients(folder, patients)
    failures += refused.items()
    notes = [f"skipped {item}: {msg}" for item, msg in failures]
    ids = {p.id for p in patients}
    notes += [f"prediction {folder.files[k].name}: no reference patient {k!r} under {reference}"
              for k in folder.files if k not in ids]
    if missing:
        notes.append(f"no prediction for {len(missing)} reference patient(s): {', '.join(missing)}")
    predictions, uncertainties = {}, {}
    for p, path in pairs:
        try:
            predictions[p.id] = read_volume(path, p)
        except Exception as exc:  # noqa: BLE001 - one bad prediction never stops the report
            msg = failure(exc, path)
            log.warning("%s", msg)
            failures.append((p.id, msg))
            notes.append(f"skipped {p.id}: {msg}")
            continue
        upath = find_uncertainty(run_dir, p.id)
        if upath is not None:
            try:
                uncertainties[p.id] = read_volume(upath, p)
            except Exception as exc:  # noqa: BLE001
                msg = failure(exc, upath)
                log.warning("%s", msg)
                failures.append((p.id, msg))
                notes.append(f"uncertainty of {p.id} left out: {msg}")
    if not predictions:
        raise MddoseError("no prediction matches a readable reference patient: " + "; ".join(notes[:3]), run_dir)
    summary, rows = load_evaluation(run_dir)
    if summary is not None or rows is not None:
        newest = folder.newest_mtime()
        evaluated = [run_dir / "evaluation" / f for f in ("summary.json", "per_patient.csv")]
        if any(p.is_file() and p.stat().st_mtime < newest for p in evaluated):
            notes.append("The evaluation files are older than the newest prediction: re-run `mddose evaluate`.")
    return build_report([p for p, _ in pairs if p.id in predictions], predictions, out,
                        uncertainties=uncertainties, summary=summary, per_patient=rows,
                        title=f"mddose report — {run_dir.resolve().name}", notes=notes, failures=failures,
                        max_patients=max_patients, figures_dir=figures_dir, force=True, progress=progress)
