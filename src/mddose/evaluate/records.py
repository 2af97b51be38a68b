"""Scores and records: every metric of one patient (:class:`PatientRecord`) and of a prediction set
(:class:`EvaluationResult`), computed from arrays.

* :func:`evaluate_patient` — one prediction (Z, Y, X) Gy against a reference :class:`~mddose.data.Patient`:
  the OpenKBP dose error and DVH metrics (:mod:`mddose.evaluate.openkbp`), clinical metrics
  (:mod:`mddose.evaluate.clinical`), MD-Dose's slice-wise HI and optionally the 3D gamma pass rate.
* :func:`evaluate_arrays` — in-memory predictions (patient id → array) against reference patients.
* :meth:`EvaluationResult.to_json` / :meth:`~EvaluationResult.to_csv` write the summary and the per-patient
  table; :func:`read_per_patient_csv` and :func:`result_values` read columns back for comparisons.

A reference patient without a possible-dose mask is refused (reported in ``errors``): the OpenKBP dose
error divides by the mask's voxel count, and the whole grid in its place gives a far too small error.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from mddose.errors import MddoseError
from mddose.evaluate.clinical import (HI_DEFINITIONS, HI_MDDOSE_DEFINITION, clinical_metrics,
                                      hi_slice_error, primary_target)
from mddose.evaluate.openkbp import dvh_differences, score_patient
from mddose.evaluate.predictions import reference_dose
from mddose.utils.fs import atomic_write, describe_error

GAMMA_CRITERIA = "3%/3mm global, 10% low-dose cutoff"
#: How the dose error is computed (written into every summary).
DOSE_ERROR_DEFINITION = ("OpenKBP: sum over the whole grid of |reference - prediction| / number of voxels in "
                         "the reference patient's possible-dose mask; patients without a possible-dose mask "
                         "are refused (listed in errors), never scored over the whole grid")
#: Columns compared by ``mddose compare``.
COMPARE_COLUMNS = ("dose_error", "dvh_error", "HI_MDDose_error", "HI_ICRU83", "gamma_pass_rate")


@dataclass
class PatientRecord:
    """Every metric of one patient.

    Attributes:
        dose_error: OpenKBP dose error (Gy).
        dvh_error: mean |reference − prediction| over this patient's OpenKBP DVH metrics (Gy).
        dvh_reference, dvh_prediction: OpenKBP DVH metrics ``{"METRIC|ROI": Gy or None}``.
        clinical_reference, clinical_prediction: :func:`clinical_metrics` of each dose.
        gamma_pass_rate: fraction (0–1) or None when not computed.
        hi_mddose_error: MD-Dose's Table-1 HI (:func:`~mddose.evaluate.clinical.hi_slice_error`).
    """

    id: str
    dose_error: float
    dvh_reference: dict[str, float | None]
    dvh_prediction: dict[str, float | None]
    clinical_reference: dict[str, float]
    clinical_prediction: dict[str, float]
    primary_target: str | None = None
    gamma_pass_rate: float | None = None
    hi_mddose_error: float | None = None

    @property
    def dvh_errors(self) -> dict[str, float]:
        return dvh_differences(self.dvh_reference, self.dvh_prediction)

    @property
    def dvh_error(self) -> float:
        v = list(self.dvh_errors.values())
        return float(np.mean(v)) if v else math.nan

    def row(self) -> dict[str, object]:
        """Flat CSV row: summary columns, then ``pred:``/``ref:`` metric columns."""
        r: dict[str, object] = {"patient": self.id, "dose_error": self.dose_error, "dvh_error": self.dvh_error,
                                "HI_MDDose_error": self.hi_mddose_error, "gamma_pass_rate": self.gamma_pass_rate,
                                "primary_target": self.primary_target}
        for hi in HI_DEFINITIONS:
            r[hi] = self.clinical_prediction.get(hi)
            r[f"ref:{hi}"] = self.clinical_reference.get(hi)
        for prefix, dvh, clin in (("pred", self.dvh_prediction, self.clinical_prediction),
                                  ("ref", self.dvh_reference, self.clinical_reference)):
            r.update({f"{prefix}:{k}": v for k, v in dvh.items()})
            r.update({f"{prefix}:{k}": v for k, v in clin.items() if k not in HI_DEFINITIONS})
        return r


@dataclass
class EvaluationResult:
    """Result of an evaluation.

    Attributes:
        records: evaluated patients, in reference order.
        missing: reference patient ids without a prediction.
        errors: ``(patient id or path, one-line message)`` of every item that failed: unreadable reference
            patients, bad or ambiguous predictions, patients that could not be scored.
        unmatched: prediction ids without a reference patient.
    """

    records: list[PatientRecord] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    reference: str = ""
    prediction: str = ""
    gamma: bool = False

    @property
    def patients(self) -> list[str]:
        return [r.id for r in self.records]

    @property
    def dose_score(self) -> float:
        """OpenKBP dose score: mean dose error over patients."""
        return float(np.mean([r.dose_error for r in self.records])) if self.records else math.nan

    @property
    def dvh_score(self) -> float:
        """OpenKBP DVH score: mean |difference| over every (patient, ROI, metric)."""
        v = [e for r in self.records for e in r.dvh_errors.values()]
        return float(np.mean(v)) if v else math.nan

    def rows(self) -> list[dict[str, object]]:
        return [r.row() for r in self.records]

    def means(self) -> dict[str, float]:
        """Mean over patients of every numeric per-patient column (NaN/None ignored)."""
        acc: dict[str, list[float]] = {}
        for row in self.rows():
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                    acc.setdefault(k, []).append(float(v))
        return {k: float(np.mean(v)) for k, v in acc.items()}

    def summary(self) -> dict:
        """JSON-ready summary (scores, ids, errors, means, per-patient OpenKBP metrics, definitions)."""
        means = self.means()
        gam = [r.gamma_pass_rate for r in self.records if r.gamma_pass_rate is not None]
        return {
            "dose_score": _num(self.dose_score), "dvh_score": _num(self.dvh_score),
            "n_patients": len(self.records), "patients": self.patients, "missing": list(self.missing),
            "errors": [{"item": i, "message": m} for i, m in self.errors],
            "unmatched_predictions": list(self.unmatched),
            "reference": self.reference, "prediction": self.prediction,
            "dose_error_definition": DOSE_ERROR_DEFINITION,
            "gamma": {"criteria": GAMMA_CRITERIA, "mean_pass_rate": float(np.mean(gam))} if gam else None,
            "hi_definitions": {**HI_DEFINITIONS, "HI_MDDose_error": HI_MDDOSE_DEFINITION},
            "means": {k: _num(v) for k, v in means.items()},
            "dose_error_per_patient": {r.id: r.dose_error for r in self.records},
            "dvh_metrics_prediction": {r.id: r.dvh_prediction for r in self.records},
            "dvh_metrics_reference": {r.id: r.dvh_reference for r in self.records},
        }

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`summary` as JSON atomically (replacing ``path``); returns the path."""
        path = Path(path)
        with atomic_write(path, "w") as fh:
            json.dump(self.summary(), fh, indent=1, allow_nan=False, default=_num)
            fh.write("\n")
        return path

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write one row per patient (columns: union over patients, first-seen order) atomically."""
        rows = self.rows()
        cols: dict[str, None] = {}
        for r in rows:
            cols.update(dict.fromkeys(r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(cols) or ["patient"], lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(v) for k, v in r.items()})
        path = Path(path)
        with atomic_write(path, "w") as fh:
            fh.write(buf.getvalue())
        return path

    def table(self) -> str:
        """Human-readable score table (per patient, then the scores, missing and failed items)."""
        lines = [f"{'patient':<12} {'dose err':>9} {'DVH err':>9} {'HI ICRU83':>9} {'HI MDDose':>9}"
                 + (f" {'gamma %':>8}" if self.gamma else "")]
        for r in self.records:
            cp = r.clinical_prediction
            line = (f"{r.id:<12} {r.dose_error:9.3f} {r.dvh_error:9.3f} {cp.get('HI_ICRU83', math.nan):9.3f} "
                    f"{_nan(r.hi_mddose_error):9.3f}")
            if self.gamma:
                line += f" {100 * _nan(r.gamma_pass_rate):8.2f}"
            lines.append(line)
        lines.append(f"Dose score {self.dose_score:.4f} Gy   DVH score {self.dvh_score:.4f} Gy   "
                     f"({len(self.records)} patients)")
        if self.missing:
            lines.append(f"missing predictions ({len(self.missing)}): {', '.join(self.missing)}")
        for item, msg in self.errors:
            lines.append(f"skipped {item}: {msg}")
        return "\n".join(lines)


def _nan(v) -> float:
    return math.nan if v is None else float(v)


def _num(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return v


def failure(exc: BaseException, where: str | os.PathLike | None = None) -> str:
    """One line for a failed item: :func:`~mddose.utils.fs.describe_error`, prefixed by ``where`` (the file
    or folder that was being read) unless the message names it already."""
    msg = describe_error(exc)
    if where is not None and os.fspath(where) not in msg:
        msg = f"{os.fspath(where)}: {msg}"
    return msg


# ---------------------------------------------------------------------------------------------- scoring
def evaluate_patient(patient, prediction: np.ndarray, *, gamma: bool = False,
                     reference_dose: np.ndarray | None = None) -> PatientRecord:
    """Every metric of one prediction against a reference patient.

    Args:
        patient: a :class:`~mddose.data.Patient` with ``dose`` and ``possible_dose_mask``.
        prediction: (Z, Y, X) Gy on the patient's grid.
        reference_dose: (Z, Y, X) Gy to use instead of ``patient.dose`` (a float64 re-read).
    Raises:
        MddoseError naming the patient (and its folder) when it has no dose or no possible-dose mask, or
        the prediction's grid differs.
    """
    src = patient.meta.get("source")
    ref = patient.dose if reference_dose is None else reference_dose
    if ref is None:
        raise MddoseError(f"patient {patient.id}: the reference has no dose", src)
    if patient.possible_dose_mask is None:
        raise MddoseError(f"patient {patient.id}: the reference has no possible-dose mask, so it is not scored "
                          "(the OpenKBP dose error divides by the mask's voxel count; add "
                          "possible_dose_mask.csv or possible_dose_mask.nii.gz)", src)
    prediction = np.asarray(prediction)
    if prediction.shape != patient.shape:
        raise MddoseError(f"patient {patient.id}: prediction grid {prediction.shape} differs from the "
                          f"reference grid {patient.shape}")
    err, dref, dpred = score_patient(ref, prediction, patient.masks, patient.possible_dose_mask,
                                     patient.spacing, patient.prescriptions)
    cref = clinical_metrics(ref, patient.masks, patient.prescriptions, patient.spacing)
    cpred = clinical_metrics(prediction, patient.masks, patient.prescriptions, patient.spacing)
    rate = None
    if gamma:
        from mddose.evaluate.gamma import gamma_pass_rate

        rate = gamma_pass_rate(ref, prediction, patient.spacing)
    return PatientRecord(patient.id, err, dref, dpred, cref, cpred,
                         primary_target(patient.masks, patient.prescriptions), rate,
                         hi_slice_error(ref, prediction))


def evaluate_arrays(references: list, predictions: Mapping[str, np.ndarray], *, gamma: bool = False,
                    progress: bool = False) -> EvaluationResult:
    """Evaluate in-memory predictions (patient id → (Z, Y, X) Gy) against reference Patients.

    A patient that cannot be scored, whatever the exception, is listed in ``errors`` and the rest go on.
    A float64 prediction of an OpenKBP patient is scored against its ``dose.csv`` re-read in float64
    (:func:`~mddose.evaluate.predictions.reference_dose`), as :func:`~mddose.evaluate.run.evaluate_predictions`
    does: exact OpenKBP scores for the predictions read by ``mddose report`` too.
    """
    res = EvaluationResult(gamma=gamma)
    ids = {p.id for p in references}
    res.unmatched = [k for k in predictions if k not in ids]
    for p in progress_bar(references, progress):
        if p.id not in predictions:
            res.missing.append(p.id)
            continue
        try:
            pred = np.asarray(predictions[p.id])
            res.records.append(evaluate_patient(p, pred, gamma=gamma, reference_dose=reference_dose(p, pred)))
        except Exception as exc:  # noqa: BLE001 - one bad patient never stops the batch
            res.errors.append((p.id, failure(exc, p.meta.get("source"))))
    return res


def progress_bar(items, progress: bool, desc: str = "evaluating"):
    """``items`` wrapped in a tqdm bar when ``progress``."""
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="pt")


# ---------------------------------------------------------------------------------------------- columns
def read_per_patient_csv(path: str | os.PathLike,
                         columns: Iterable[str] = COMPARE_COLUMNS) -> dict[str, dict[str, float]]:
    """column → {patient: value} from a per-patient CSV written by :meth:`EvaluationResult.to_csv`."""
    path = Path(path)
    out: dict[str, dict[str, float]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                pid = row.get("patient")
                if not pid:
                    raise MddoseError("per-patient CSV without a 'patient' column", path)
                for c in columns:
                    if row.get(c) not in (None, ""):
                        out.setdefault(c, {})[pid] = float(row[c])
    except (ValueError, UnicodeDecodeError, csv.Error) as exc:
        if isinstance(exc, MddoseError):
            raise
        raise MddoseError(f"malformed per-patient CSV ({exc})", path) from None
    return out


def result_values(result: EvaluationResult, columns: Iterable[str] = COMPARE_COLUMNS) -> dict[str, dict[str, float]]:
    """column → {patient: value} of an evaluation (None/NaN left out)."""
    out: dict[str, dict[str, float]] = {}
    for row in result.rows():
        for c in columns:
            v = row.get(c)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out.setdefault(c, {})[str(row["patient"])] = float(v)
    return out
