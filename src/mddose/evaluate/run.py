"""Runs and comparisons: evaluate a prediction folder against reference patients, write the outputs,
compare several prediction folders.

``evaluate_predictions(reference, prediction)`` loads the reference patients (any format readable by
:func:`mddose.data.io.load_patients`), reads one prediction per patient from the prediction folder with
the shared reader (:mod:`mddose.evaluate.predictions`: every format ``mddose predict`` writes) and scores
each (:func:`mddose.evaluate.records.evaluate_patient`). Reference patients without a prediction are listed
in ``missing``; every item that fails — an unreadable reference patient, a bad or ambiguous prediction, a
patient that cannot be scored, whatever the exception — is listed in ``errors`` with its path or id, and
the batch goes on.

Precision: for OpenKBP references with CSV predictions both doses are read in float64 so that the scores
equal the official evaluator's to ~1e-15 (the reference's ``dose.csv`` is found through the patient's
folder; when it cannot be, the patient is an error, never silently scored against the float32 dose, which
is ~5e-8 relative off); otherwise the float32 arrays of the patient contract are used (relative
differences ≲ 1e-7).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mddose.errors import MddoseError
from mddose.evaluate.predictions import find_predictions, match_patients, read_volume, reference_dose
from mddose.evaluate.records import (COMPARE_COLUMNS, EvaluationResult, evaluate_patient, failure, progress_bar,
                                     read_per_patient_csv, result_values)
from mddose.utils.fs import check_new_output
from mddose.utils.log import logger

EVALUATION_DIR = "evaluation"
SUMMARY_JSON = "summary.json"
PER_PATIENT_CSV = "per_patient.csv"
#: Display labels of the compared columns.
COMPARE_LABELS = {"dose_error": "Dose Score", "dvh_error": "DVH Score", "HI_MDDose_error": "HI (MD-Dose, mean Δσ/μ)",
                  "HI_ICRU83": "HI ICRU83 (D2-D98)/D50", "gamma_pass_rate": "Gamma 3%/3mm pass rate"}


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_predictions(reference: str | os.PathLike, prediction: str | os.PathLike, *, gamma: bool = False,
                         progress: bool = False) -> EvaluationResult:
    """Evaluate a prediction folder against reference patients.

    Args:
        reference: a patient directory or a directory of patient directories (OpenKBP, NIfTI, DICOM).
        prediction: a prediction folder (layout in :mod:`mddose.evaluate.predictions`).
        gamma: also compute the 3D gamma pass rate (3 %/3 mm global, 10 % cutoff).
    Raises:
        MddoseError if no reference patient can be read, the prediction folder holds no prediction, or
        no prediction matches a reference patient. Every failed item is in ``result.errors``.
    """
    from mddose.data.io import load_patients

    folder = find_predictions(prediction)
    patients, bad = load_patients(reference, progress=progress)
    if not patients:
        why = f" ({bad[0][1]})" if bad else ""
        raise MddoseError(f"no reference patient could be read{why}", reference)
    res = EvaluationResult(reference=str(Path(reference).resolve()), prediction=str(Path(prediction).resolve()),
                           gamma=gamma)
    res.errors.extend(bad)
    pairs, res.missing, refused = match_patients(folder, patients)
    res.errors.extend(refused.items())
    ids = [p.id for p in patients]
    res.unmatched = [k for k in folder.files if k not in set(ids)]
    if not any(i in folder.files or i in folder.conflicts or i in folder.others for i in ids):
        raise MddoseError(f"no prediction matches a reference patient (references {_few(ids)}, "
                          f"predictions {_few(list(folder.files))})", prediction)
    for p, path in progress_bar(pairs, progress):
        try:
            pred = read_volume(path, p)
            res.records.append(evaluate_patient(p, pred, gamma=gamma, reference_dose=reference_dose(p, pred)))
        except Exception as exc:  # noqa: BLE001 - one bad patient never stops the batch
            msg = failure(exc, path)
            logger.warning("skipping prediction of %s: %s", p.id, msg)
            res.errors.append((p.id, msg))
    return res


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", … ({len(items)} in all)" if len(items) > n else "")


def default_outputs(prediction: str | os.PathLike) -> tuple[Path, Path]:
    """(summary JSON, per-patient CSV) default locations: ``PRED/evaluation/``."""
    d = Path(prediction) / EVALUATION_DIR
    return d / SUMMARY_JSON, d / PER_PATIENT_CSV


def check_outputs(summary_json: str | os.PathLike, per_patient_csv: str | os.PathLike,
                  force: bool = False) -> tuple[Path, Path]:
    """The two output paths, refused (one-line MddoseError) when one exists and ``force`` is false or both
    are the same file. Call before the work, so that nothing is computed for an output that is refused."""
    js, pp = Path(summary_json), Path(per_patient_csv)
    if js.resolve() == pp.resolve():
        raise MddoseError("--json and --csv name the same file", js)
    for p in (js, pp):
        check_new_output(p, force)
        if p.is_dir():
            raise MddoseError("output is a directory", p)
    return js, pp


def write_evaluation(result: EvaluationResult, summary_json: str | os.PathLike, per_patient_csv: str | os.PathLike,
                     *, force: bool = False) -> tuple[Path, Path]:
    """Write the summary JSON and the per-patient CSV (each atomically); an existing file is replaced only
    with ``force``. Returns the two paths."""
    js, pp = check_outputs(summary_json, per_patient_csv, force)
    for path, write in ((pp, result.to_csv), (js, result.to_json)):
        try:
            write(path)
        except OSError as exc:
            raise MddoseError(f"cannot write ({exc.strerror or exc})", path) from None
    return js, pp


# ---------------------------------------------------------------------------------------------- comparison
def _reusable(run: Path, reference: Path, gamma: bool) -> tuple[Path, list] | None:
    """(RUN/evaluation/per_patient.csv, its errors) if it was made against ``reference`` after every
    prediction file; None otherwise."""
    js, pp = default_outputs(run)
    if not (js.is_file() and pp.is_file()):
        return None
    try:
        summary = json.loads(js.read_text(encoding="utf-8"))
        newest = find_predictions(run).newest_mtime()
        fresh = pp.stat().st_mtime >= newest and js.stat().st_mtime >= newest
    except (ValueError, MddoseError, OSError):
        return None
    if not isinstance(summary, dict) or summary.get("reference") != str(reference.resolve()):
        return None
    if gamma and not summary.get("gamma"):
        return None
    errors = [(str(e.get("item")), str(e.get("message"))) for e in summary.get("errors") or []
              if isinstance(e, dict)]
    return (pp, errors) if fresh else None


def compare_runs(runs: list[str | os.PathLike], reference: str | os.PathLike, *, names: list[str] | None = None,
                 baseline: str | None = None, test: str = "t", gamma: bool = False, progress: bool = False):
    """Compare prediction folders on the same reference patients.

    A run's ``evaluation/per_patient.csv`` is reused when it was computed against ``reference`` after
    its newest prediction file and has every compared column; otherwise the run is evaluated in memory
    (nothing is written).

    Returns:
        ``(comparison, errors)``: a :class:`mddose.evaluate.stats.Comparison` of the patients scored in
        each run, and ``[("<run name>: <item>", message)]`` of every item that failed.
    Raises:
        MddoseError for bad names, or a run in which no patient could be scored.
    """
    from mddose.evaluate.stats import compare

    if names is not None and len(names) != len(runs):
        raise MddoseError(f"--names has {len(names)} names for {len(runs)} runs")
    names = names or [Path(r).resolve().name for r in runs]
    if len(set(names)) != len(names):
        raise MddoseError(f"run names must be distinct, got {names} (use --names)")
    values, errors = {}, []
    needed = [c for c in COMPARE_COLUMNS if c != "gamma_pass_rate" or gamma]
    for name, run in zip(names, runs):
        reused = _reusable(Path(run), Path(reference), gamma)
        cached = read_per_patient_csv(reused[0]) if reused is not None else {}
        if cached and all(c in cached for c in needed):
            logger.info("%s: reusing %s", name, reused[0])
            values[name] = cached
            errors += [(f"{name}: {item}", msg) for item, msg in reused[1]]
            continue
        res = evaluate_predictions(reference, run, gamma=gamma, progress=progress)
        errors += [(f"{name}: {item}", msg) for item, msg in res.errors]
        if not res.records:
            raise MddoseError(f"run {name}: no prediction could be evaluated", run)
        values[name] = result_values(res)
    metrics = [(c, COMPARE_LABELS[c]) for c in COMPARE_COLUMNS if any(c in v for v in values.values())]
    try:
        return compare(values, metrics=metrics, reference=baseline, test=test), errors
    except ValueError as exc:
        raise MddoseError(str(exc)) from None
