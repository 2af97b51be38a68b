"""One self-contained HTML report of a prediction run (``mddose report RUN_DIR``).

The file opens offline: images are base64 ``data:`` URIs, CSS and JavaScript are inline, nothing
refers to an external URL. It holds

* the score tables — ``RUN_DIR/evaluation/summary.json`` and ``per_patient.csv`` when present, else a
  minimal table computed here (MAE in Gy inside the possible-dose mask, maximum doses, D95 of the
  highest target);
* per patient: the dose/error figure (:func:`mddose.evaluate.figures.dose_error_figure`), the DVH figure
  (:func:`mddose.evaluate.figures.dvh_figure`) and a slice viewer — a range slider that swaps pre-rendered
  axial frames (CT in grey with prediction, ground truth, error and, when present, uncertainty over it).

Run directory layout (as written by ``mddose predict``): ``<id>.csv`` (OpenKBP prediction format),
``<id>.nii.gz`` / ``<id>.nii``, ``<id>/RTDOSE.dcm`` (resampled onto the reference CT grid) or ``<id>.npy``
(a (Z, Y, X) Gy array), optionally under ``predictions/``;
uncertainty maps (standard deviation in Gy) in ``uncertainty/<id>.<same suffixes>``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import logging
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mddose.data.patient import Patient
from mddose.errors import MddoseError
from mddose.utils.fs import atomic_write, check_new_output

log = logging.getLogger(__name__)

#: Suffixes of volume files the report reads, longest first.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".csv", ".npy")
#: Sub-directories of a run dir that never hold predictions.
_NOT_PREDICTION_DIRS = {"uncertainty", "evaluation", "figures", "std"}
#: JSON files of a run dir that may record the input data of ``mddose predict``.
_RUN_META = ("predict.json", "run.json", "meta.json", "config.json")


# ---------------------------------------------------------------------------------------------- discovery
def _split_suffix(name: str) -> tuple[str, str] | None:
    for suf in VOLUME_SUFFIXES:
        if name.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)], suf
    return None


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _looks_like_dose_csv(path: Path) -> bool:
    """OpenKBP prediction CSVs start with a header such as ``,data`` (flat index, value)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.readline().strip().lower()
    except OSError:
        return False
    return head.startswith(",") or "data" in head


def find_predictions(run_dir: str | Path) -> dict[str, Path]:
    """Patient id → prediction file of a run dir (``RUN_DIR`` or ``RUN_DIR/predictions``).

    Raises :class:`MddoseError` if ``run_dir`` is not a directory or holds no prediction.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MddoseError("run directory not found", run_dir)
    found: dict[str, Path] = {}
    for base in (run_dir, run_dir / "predictions"):
        if not base.is_dir():
            continue
        for p in sorted(base.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_file():
                split = _split_suffix(p.name)
                if split and (split[1] != ".csv" or _looks_like_dose_csv(p)):
                    found.setdefault(split[0], p)
            elif p.is_dir() and p.name not in _NOT_PREDICTION_DIRS:
                for name in ("dose.nii.gz", "dose.nii", "dose.csv", "dose.npy", "RTDOSE.dcm"):
                    if (p / name).is_file():
                        found.setdefault(p.name, p / name)
                        break
    if not found:
        raise MddoseError("no predictions found (expected <patient>.csv, <patient>.nii.gz or <patient>.npy "
                          "files as written by `mddose predict`)", run_dir)
    return dict(sorted(found.items(), key=lambda kv: _natural_key(kv[0])))


def find_uncertainty(run_dir: str | Path, patient_id: str) -> Path | None:
    """The uncertainty (std, Gy) file of one patient, or None; tolerant of a few layouts."""
    run_dir = Path(run_dir)
    names = [f"{patient_id}{s}" for s in VOLUME_SUFFIXES]
    names += [f"{patient_id}{tag}{s}" for tag in ("_std", "_uncertainty", "-std") for s in VOLUME_SUFFIXES]
    names += [f"{patient_id}/std{s}" for s in VOLUME_SUFFIXES]
    for base in (run_dir / "uncertainty", run_dir / "std", run_dir / "predictions" / "uncertainty"):
        for n in names:
            if (base / n).is_file():
                return base / n
    for n in names[len(VOLUME_SUFFIXES):]:
        if (run_dir / n).is_file():
            return run_dir / n
    return None


def read_volume(path: str | Path, shape: tuple[int, int, int], patient: Patient | None = None) -> np.ndarray:
    """Read a (Z, Y, X) Gy volume (dose or std) from an OpenKBP CSV, NIfTI, ``.npy`` or RTDOSE file.

    An RTDOSE (``.dcm``) is resampled onto ``patient``'s grid (required for it).

    Raises :class:`MddoseError` naming the file on a wrong shape, NaN or negative values.
    """
    path = Path(path)
    split = _split_suffix(path.name)
    suffix = split[1] if split else path.suffix
    if suffix == ".csv":
        from mddose.data.openkbp import read_dose_csv

        arr = read_dose_csv(path, shape)
    elif suffix in (".nii", ".nii.gz"):
        from mddose.data.nifti import read_nifti_array

        arr = read_nifti_array(path)[0]
    elif suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise MddoseError(f"cannot read .npy volume ({exc})", path) from exc
    elif suffix.lower() == ".dcm":
        if patient is None:
            raise MddoseError("reading an RTDOSE needs the reference patient's grid", path)
        from mddose.data.dicom_dose import read_rtdose, resample_dose
        from mddose.data.dicom_read import Grid

        arr = resample_dose(read_rtdose(path), Grid.of(patient))
    else:
        raise MddoseError(f"unsupported prediction file type {path.name!r} (use .csv, .nii.gz, .npy or .dcm)",
                          path)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.shape != tuple(shape):
        raise MddoseError(f"volume has shape {arr.shape}, the patient's grid is {tuple(shape)}", path)
    if not np.all(np.isfinite(arr)) or (arr.size and float(arr.min()) < 0):
        raise MddoseError("volume contains NaN, infinite or negative values", path)
    return arr


def load_evaluation(run_dir: str | Path) -> tuple[dict | None, list[dict] | None]:
    """``(summary.json, per_patient.csv rows)`` from ``RUN_DIR/evaluation`` (or ``RUN_DIR``); None if absent."""
    summary = rows = None
    for base in (Path(run_dir) / "evaluation", Path(run_dir)):
        if summary is None and (base / "summary.json").is_file():
            try:
                summary = json.loads((base / "summary.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise MddoseError(f"cannot read evaluation summary ({exc})", base / "summary.json") from exc
        if rows is None and (base / "per_patient.csv").is_file():
            with open(base / "per_patient.csv", newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
    return summary, rows


def _reference_from_run(run_dir: Path) -> Path:
    for name in _RUN_META:
        p = run_dir / name
        if p.is_file():
            try:
                meta = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            for key in ("reference", "input", "data", "input_path"):
                if isinstance(meta, dict) and isinstance(meta.get(key), str) and Path(meta[key]).exists():
                    return Path(meta[key])
    raise MddoseError("--reference: not given, and the run directory records no input data "
                      f"({', '.join(_RUN_META)} with an 'input' path)", run_dir)


# ---------------------------------------------------------------------------------------------- metrics
def basic_metrics(patient: Patient, prediction: np.ndarray) -> dict:
    """Minimal per-patient scores: MAE (Gy) in the possible-dose mask, max doses, D95 of the highest target.

    Args:
        patient: with ``dose`` (the reference; if None only the predicted max is given).
        prediction: (Z, Y, X) Gy.
    """
    row: dict = {"patient": patient.id, "max_pred_gy": float(prediction.max()) if prediction.size else 0.0}
    if patient.dose is None:
        return row
    mask = patient.dose_mask()
    row["mae_gy"] = float(np.abs(prediction[mask] - patient.dose[mask]).mean()) if mask.any() else float("nan")
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
                   full: bool = True) -> tuple[dict, list[dict], list[str]]:
    """Score tables when the run dir has no ``evaluation/``: ``(summary, per-patient rows, notes)``.

    With ``full`` the OpenKBP and clinical scores of :func:`mddose.evaluate.run.evaluate_arrays` are used
    (when that module is available); otherwise, or for patients without a reference dose, the minimal
    :func:`basic_metrics`.
    """
    with_dose = [p for p in patients if p.dose is not None]
    if full and with_dose:
        try:
            from mddose.evaluate.run import evaluate_arrays
        except ImportError:  # pragma: no cover - the evaluate module ships with mddose
            evaluate_arrays = None
        if evaluate_arrays is not None:
            res = evaluate_arrays(with_dose, {p.id: predictions[p.id] for p in with_dose})
            if res.records:
                summary = {"source": "computed by mddose report with mddose.evaluate (no RUN_DIR/evaluation)",
                           **res.summary()}
                return summary, res.rows(), [f"not scored {i}: {m}" for i, m in res.errors]
    rows = [basic_metrics(p, predictions[p.id]) for p in patients]
    return _computed_summary(rows), rows, []


#: Summary keys not shown in the summary table (they are per-patient values, shown in the per-patient table).
_SUMMARY_HIDDEN = ("dvh_metrics_prediction", "dvh_metrics_reference", "dose_error_per_patient", "patients")


# ---------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;
color:#222;background:#fafafa}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
.meta{color:#666;font-size:.9em}.note{background:#fff6d6;border:1px solid #e8d48a;padding:.4em .8em;margin:.5em 0}
.cards{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}.card{background:#fff;border:1px solid #ddd;border-radius:6px;
padding:.6em 1em}.card b{display:block;font-size:1.6em}
.tablewrap{overflow-x:auto;max-height:32em;overflow-y:auto;border:1px solid #ddd;background:#fff}
table{border-collapse:collapse;font-size:.85em}th,td{padding:.25em .6em;border-bottom:1px solid #eee;text-align:right;
white-space:nowrap}th{position:sticky;top:0;background:#f0f0f0}table.kv th{text-align:left}
td:first-child,th:first-child{text-align:left}
table.kv td{white-space:normal;text-align:left;max-width:60em}table.kv td:first-child{white-space:nowrap}
.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}figure{margin:1em 0}
figure img{max-width:100%;height:auto;background:#fff}figcaption{color:#555;font-size:.9em}
.viewer{background:#111;color:#eee;padding:.6em;border-radius:6px;display:inline-block;max-width:100%}
.viewer img.frame{display:block;width:min(100%,var(--w));height:auto;image-rendering:auto}
.captions{display:flex;width:min(100%,var(--w))}.captions span{flex:1;text-align:center;font-size:.85em}
.controls{display:flex;align-items:center;gap:1em;margin-top:.4em}.controls input{flex:1}
.legends{display:flex;gap:1.2em;flex-wrap:wrap;font-size:.8em;margin-top:.4em}
.cbar{display:flex;align-items:center;gap:.3em}.grad{width:90px;height:10px;border:1px solid #555}
nav a{margin-right:.8em}
"""

_JS = """
document.querySelectorAll('.viewer').forEach(function (v) {
  var data = JSON.parse(v.querySelector('script.frames').textContent);
  var img = v.querySelector('img.frame'), s = v.querySelector('input.slider'), lab = v.querySelector('.zlabel');
  function show() { var i = parseInt(s.value, 10); img.src = data.src[i]; lab.textContent = data.label[i]; }
  s.addEventListener('input', show); s.addEventListener('change', show); show();
});
"""


def _fmt(value) -> str:
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


def _table(rows: Sequence[Mapping], cls: str = "") -> str:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return (f'<div class="tablewrap"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table></div>")


def _scores_html(summary: Mapping | None, rows: Sequence[Mapping] | None) -> str:
    parts = ["<h2 id='scores'>Scores</h2>"]
    flat = [(k, v) for k, v in _flatten(summary or {}) if k.split(".")[0] not in _SUMMARY_HIDDEN
            and not (k.startswith("means.") and ":" in k)]
    cards = [(k, v) for k, v in flat if re.search(r"(dose|dvh)_score", k) and not isinstance(v, str)]
    if cards:
        parts.append('<div class="cards">' + "".join(
            f'<div class="card">{html.escape(k)}<b>{_fmt(v)}</b></div>' for k, v in cards[:6]) + "</div>")
    if flat:
        parts.append("<h3>Summary</h3>" + _table([{"key": k, "value": v} for k, v in flat], "kv"))
    if rows:
        parts.append("<h3>Per patient</h3>" + _table(rows))
    return "\n".join(parts)


def _colorbar_html(title: str, cmap: str, lo: float, hi: float, unit: str) -> str:
    from mddose.evaluate.figures import colormap_stops

    grad = ",".join(colormap_stops(cmap))
    return (f'<span class="cbar">{html.escape(title)}: {lo:.1f}<span class="grad" '
            f'style="background:linear-gradient(to right,{grad})"></span>{hi:.1f} {html.escape(unit)}</span>')


def _viewer_html(index: int, patient_id: str, frames: dict) -> str:
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


def _patient_html(index: int, patient: Patient, prediction: np.ndarray, std: np.ndarray | None,
                  metrics: Mapping, figures_dir: Path | None, dpi: int) -> str:
    from mddose.evaluate.figures import (default_slices, dose_error_figure, dvh_figure, figure_data_uri,
                                         save_figure, viewer_frames)

    pid = patient.id
    line = ", ".join(f"{html.escape(k)} {_fmt(v)}" for k, v in metrics.items() if k != "patient")
    parts = [f'<section class="patient" id="p-{index}"><h2>{html.escape(pid)}</h2><p>{line}</p>']
    parts.append(_viewer_html(index, pid, viewer_frames(patient, prediction, std)))
    if patient.dose is not None:
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
        parts.append("</div>")
    else:
        parts.append('<p class="note">No reference dose: figures and error maps left out.</p>')
    parts.append("</section>")
    return "\n".join(parts)


def build_report(patients: Sequence[Patient], predictions: Mapping[str, np.ndarray], out: str | Path, *,
                 uncertainties: Mapping[str, np.ndarray] | None = None, summary: Mapping | None = None,
                 per_patient: Sequence[Mapping] | None = None, title: str = "mddose report",
                 notes: Sequence[str] = (), max_patients: int | None = 20, figures_dir: str | Path | None = None,
                 force: bool = False, dpi: int = 80, full_scores: bool = True, progress: bool = False) -> Path:
    """Write the self-contained HTML report.

    Args:
        patients: reference patients (ct, masks, and ``dose`` = ground truth when known).
        predictions: patient id → (Z, Y, X) Gy predicted dose; patients without one are left out.
        out: the HTML file (written atomically; refused if it exists unless ``force``).
        uncertainties: patient id → (Z, Y, X) Gy standard deviation (optional viewer panel).
        summary, per_patient: score tables (``summary.json`` / ``per_patient.csv`` of ``mddose evaluate``);
            when ``per_patient`` is None they are computed (:func:`compute_scores`; ``full_scores=False``:
            only the minimal :func:`basic_metrics`); a given ``summary`` is kept.
        notes: lines shown at the top (e.g. skipped patients).
        max_patients: per-patient sections (viewer, figures) for at most this many patients.
        figures_dir: also write the figures there as PNG files.
        progress: show a tqdm progress bar over the patients' sections.

    Returns:
        The path written.
    """
    out = check_new_output(out, force)
    uncertainties = uncertainties or {}
    cases = [p for p in sorted(patients, key=lambda p: _natural_key(p.id)) if p.id in predictions]
    if not cases:
        raise MddoseError("no patient has both reference data and a prediction", out)
    metrics = [basic_metrics(p, predictions[p.id]) for p in cases]
    notes = list(notes)
    computed = per_patient is None
    if computed:
        computed_summary, per_patient, more = compute_scores(cases, predictions, full=full_scores)
        summary = summary if summary is not None else computed_summary
        notes += more
    shown = cases if max_patients is None else cases[:max_patients]
    if len(shown) < len(cases):
        notes.append(f"Slice viewers and figures are shown for the first {len(shown)} of {len(cases)} patients.")
    fdir = Path(figures_dir) if figures_dir is not None else None
    from mddose import __version__

    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    nav = "".join(f'<a href="#p-{i}">{html.escape(p.id)}</a>' for i, p in enumerate(shown))
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="meta">mddose {html.escape(__version__)} · {stamp} · {len(cases)} patient(s)'
            + (" · scores computed by the report" if computed else "") + "</p>",
            *[f'<p class="note">{html.escape(n)}</p>' for n in notes],
            f"<nav><a href='#scores'>Scores</a>{nav}</nav>",
            _scores_html(summary, per_patient)]
    items = enumerate(shown)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, total=len(shown), desc="report", unit="pt")
    for i, p in items:
        body.append(_patient_html(i, p, predictions[p.id], uncertainties.get(p.id), metrics[cases.index(p)],
                                  fdir, dpi))
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
           f"<body>{''.join(body)}<script>{_JS}</script></body></html>")
    with atomic_write(out, "wb") as fh:
        fh.write(doc.encode("utf-8"))
    return out


def report_run(run_dir: str | Path, reference: str | Path | None = None, out: str | Path | None = None, *,
               force: bool = False, max_patients: int | None = 20, figures_dir: str | Path | None = None,
               progress: bool = False) -> Path:
    """``mddose report``: read a prediction run dir and its reference patients, write the HTML report.

    Bad or unmatched patients are listed in the report and skipped; raises :class:`MddoseError` when the
    run dir holds no prediction or no prediction matches a reference patient.
    """
    run_dir = Path(run_dir)
    preds_files = find_predictions(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    check_new_output(out, force)
    reference = Path(reference) if reference is not None else _reference_from_run(run_dir)
    from mddose.data.io import load_patients

    patients, errors = load_patients(reference, progress=progress)
    notes = [f"skipped reference {p}: {e}" for p, e in errors]
    by_id = {p.id: p for p in patients}
    predictions, uncertainties = {}, {}
    for pid, path in preds_files.items():
        if pid not in by_id:
            notes.append(f"prediction {path.name}: no reference patient {pid!r} under {reference}")
            continue
        try:
            predictions[pid] = read_volume(path, by_id[pid].shape, by_id[pid])
        except MddoseError as exc:
            log.warning("%s", exc)
            notes.append(f"skipped {pid}: {exc}")
            continue
        upath = find_uncertainty(run_dir, pid)
        if upath is not None:
            try:
                uncertainties[pid] = read_volume(upath, by_id[pid].shape, by_id[pid])
            except MddoseError as exc:
                log.warning("%s", exc)
                notes.append(f"uncertainty of {pid} left out: {exc}")
    if not predictions:
        raise MddoseError("no prediction matches a reference patient: " + "; ".join(notes[:3]), run_dir)
    summary, rows = load_evaluation(run_dir)
    if summary is not None or rows is not None:
        newest = max(p.stat().st_mtime for p in preds_files.values())
        evaluated = [run_dir / d / f for d in ("evaluation", ".") for f in ("summary.json", "per_patient.csv")]
        if any(p.is_file() and p.stat().st_mtime < newest for p in evaluated):
            notes.append("The evaluation files are older than the newest prediction: re-run `mddose evaluate`.")
    return build_report([by_id[k] for k in predictions], predictions, out, uncertainties=uncertainties,
                        summary=summary, per_patient=rows, title=f"mddose report — {run_dir.resolve().name}",
                        notes=notes, max_patients=max_patients, figures_dir=figures_dir, force=True,
                        progress=progress)
