"""Evaluate a set of predicted doses against reference patients.

``evaluate_predictions(reference, prediction)`` loads the reference patients (any format readable by
:func:`mddose.data.io.load_patients`), finds one prediction per patient in ``prediction`` —

* ``<id>.csv`` (OpenKBP prediction format, e.g. ``pt_201.csv``),
* ``<id>.nii.gz`` / ``<id>.nii``, or ``<id>/dose.nii.gz`` / ``<id>/dose.nii`` / ``<id>/dose.csv`` —

and computes per patient the OpenKBP dose error and DVH metrics (:mod:`mddose.evaluate.openkbp`), the
clinical metrics (:mod:`mddose.evaluate.clinical`) and optionally the 3D gamma pass rate. Reference
patients without a prediction are listed in ``missing``; bad predictions (wrong grid, NaN or negative
values, unreadable files) are reported in ``errors`` and skipped.

Precision: for OpenKBP references with CSV predictions both doses are re-read in float64 so that the
scores equal the official evaluator's to ~1e-15; otherwise the float32 arrays of the patient contract
are used (relative differences ≲ 1e-7).
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
from mddose.utils.log import logger

GAMMA_CRITERIA = "3%/3mm global, 10% low-dose cutoff"
_NIFTI = (".nii.gz", ".nii")


# ---------------------------------------------------------------------------------------- records
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
    """Result of :func:`evaluate_predictions`.

    Attributes:
        records: evaluated patients, in reference order.
        missing: reference patient ids without a prediction.
        errors: ``(patient id or path, message)`` of bad predictions and unreadable reference patients.
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
        """JSON-ready summary (scores, ids, means, per-patient OpenKBP metrics, definitions)."""
        means = self.means()
        gam = [r.gamma_pass_rate for r in self.records if r.gamma_pass_rate is not None]
        return {
            "dose_score": _num(self.dose_score), "dvh_score": _num(self.dvh_score),
            "n_patients": len(self.records), "patients": self.patients, "missing": list(self.missing),
            "errors": [{"item": i, "message": m} for i, m in self.errors],
            "unmatched_predictions": list(self.unmatched),
            "reference": self.reference, "prediction": self.prediction,
            "gamma": {"criteria": GAMMA_CRITERIA, "mean_pass_rate": float(np.mean(gam))} if gam else None,
            "hi_definitions": {**HI_DEFINITIONS, "HI_MDDose_error": HI_MDDOSE_DEFINITION},
            "means": {k: _num(v) for k, v in means.items()},
            "dose_error_per_patient": {r.id: r.dose_error for r in self.records},
            "dvh_metrics_prediction": {r.id: r.dvh_prediction for r in self.records},
            "dvh_metrics_reference": {r.id: r.dvh_reference for r in self.records},
        }

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`summary` as JSON atomically; returns the path."""
        from mddose.utils.fs import atomic_write

        path = Path(path)
        with atomic_write(path, "w") as fh:
            json.dump(self.summary(), fh, indent=1, allow_nan=False, default=_num)
            fh.write("\n")
        return path

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write one row per patient (columns: union over patients, first-seen order) atomically."""
        from mddose.utils.fs import atomic_write

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
        """Human-readable score table (per patient, then the scores)."""
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


# ---------------------------------------------------------------------------------------- reading
def find_predictions(prediction: str | os.PathLike) -> dict[str, Path]:
    """Patient id → prediction file in a prediction directory (see the module docstring).

    Raises MddoseError if ``prediction`` is not a directory or holds no prediction at all.
    """
    d = Path(prediction)
    if not d.is_dir():
        raise MddoseError("no such prediction directory" if not d.exists() else "not a directory", d)
    found: dict[str, Path] = {}
    for p in sorted(d.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file():
            pid = _strip_ext(p.name)
            if pid is not None:
                found.setdefault(pid, p)
        elif p.is_dir():
            for name in ("dose.nii.gz", "dose.nii", "dose.csv"):
                if (p / name).is_file():
                    found.setdefault(p.name, p / name)
                    break
    if not found:
        raise MddoseError("no predictions found (expected <id>.csv, <id>.nii.gz or <id>/dose.nii.gz)", d)
    return found


def _strip_ext(name: str) -> str | None:
    for ext in (*_NIFTI, ".csv"):
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return None


def _other_files(prediction: Path, ids: Iterable[str]) -> dict[str, Path]:
    """Files named after a patient id with an unsupported extension (``pt_1.npy``, ``pt_1.txt``)."""
    ids = set(ids)
    out = {}
    for p in prediction.iterdir():
        if p.is_file() and not p.name.startswith(".") and _strip_ext(p.name) is None:
            stem = p.name.split(".")[0]
            if stem in ids:
                out[stem] = p
    return out


def read_prediction(path: Path, reference) -> np.ndarray:
    """Read one prediction on ``reference``'s grid → (Z, Y, X) float Gy; raise MddoseError if bad."""
    shape = reference.shape
    if path.name.lower().endswith(".csv"):
        arr = _read_csv_dose(path, shape, exact=reference.meta.get("format") == "openkbp")
    else:
        arr = _read_nifti_dose(path, reference)
    if arr.shape != tuple(shape):
        raise MddoseError(f"prediction grid {arr.shape} differs from the reference grid {tuple(shape)}", path)
    if not np.all(np.isfinite(arr)):
        raise MddoseError(f"prediction contains {int(np.count_nonzero(~np.isfinite(arr)))} NaN or infinite "
                          "values", path)
    if arr.size and float(arr.min()) < 0:
        raise MddoseError(f"prediction contains negative doses (min {float(arr.min()):g} Gy)", path)
    return arr


def _read_csv_dose(path: Path, shape, exact: bool) -> np.ndarray:
    from mddose.data import openkbp as okbp

    _check_text(path)
    if exact:
        try:  # float64, for bit-exact OpenKBP scores (read_dose_csv returns float32)
            return okbp._read_sparse(path, okbp.file_shape(tuple(shape)), "dose", dtype=np.float64)
        except (AttributeError, TypeError):
            pass
    return okbp.read_dose_csv(path, tuple(shape))


def _check_text(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if b"\0" in head:
        raise MddoseError("not a CSV text file (binary content)", path)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a multi-byte char cut at the block end
            raise MddoseError("not a CSV text file (not UTF-8 text)", path) from None


def _read_nifti_dose(path: Path, reference) -> np.ndarray:
    try:
        from mddose.data.nifti import read_nifti_array
    except ImportError:
        raise MddoseError("NIfTI predictions need mddose.data.nifti, which is not available", path) from None
    try:
        arr, spacing, _origin, _direction = read_nifti_array(path)
    except MddoseError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds
        raise MddoseError(f"not a readable NIfTI file ({exc})", path) from None
    arr = np.asarray(arr)
    if arr.shape == tuple(reference.shape) and not np.allclose(spacing, reference.spacing, rtol=1e-3):
        raise MddoseError(f"prediction voxel size {tuple(spacing)} mm differs from the reference "
                          f"{reference.spacing} mm", path)
    return arr


def _reference_dose(patient) -> np.ndarray:
    """The reference dose, re-read in float64 from an OpenKBP dose.csv when possible."""
    src = patient.meta.get("source")
    if patient.meta.get("format") == "openkbp" and src and (Path(src) / "dose.csv").is_file():
        try:
            from mddose.data import openkbp as okbp

            return okbp._read_sparse(Path(src) / "dose.csv", okbp.file_shape(patient.shape), "dose",
                                     dtype=np.float64)
        except (AttributeError, TypeError, MddoseError, OSError):
            pass
    return patient.dose


# ---------------------------------------------------------------------------------------- evaluation
def evaluate_patient(patient, prediction: np.ndarray, *, gamma: bool = False,
                     reference_dose: np.ndarray | None = None) -> PatientRecord:
    """Every metric of one prediction (Z, Y, X) Gy against a reference Patient (with dose)."""
    ref = patient.dose if reference_dose is None else reference_dose
    if ref is None:
        raise MddoseError(f"patient {patient.id}: the reference has no dose")
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
    """Evaluate in-memory predictions (patient id → (Z, Y, X) Gy) against reference Patients."""
    res = EvaluationResult(gamma=gamma)
    ids = {p.id for p in references}
    res.unmatched = [k for k in predictions if k not in ids]
    for p in _progress(references, progress):
        if p.id not in predictions:
            res.missing.append(p.id)
            continue
        try:
            res.records.append(evaluate_patient(p, predictions[p.id], gamma=gamma))
        except (MddoseError, ValueError) as exc:
            res.errors.append((p.id, str(exc)))
    return res


def _progress(items, progress: bool):
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="evaluating", unit="pt")


def evaluate_predictions(reference: str | os.PathLike, prediction: str | os.PathLike, *, gamma: bool = False,
                         progress: bool = False) -> EvaluationResult:
    """Evaluate a prediction directory against reference patients.

    Args:
        reference: a patient directory or a directory of patient directories (OpenKBP, NIfTI, DICOM).
        prediction: a directory of ``<id>.csv`` / ``<id>.nii.gz`` / ``<id>/dose.nii.gz`` files.
        gamma: also compute the 3D gamma pass rate (3 %/3 mm global, 10 % cutoff).
    Raises:
        MddoseError if no reference patient can be read, the prediction directory holds no prediction,
        or no prediction matches a reference patient. Individual bad predictions are reported in
        ``result.errors`` and skipped.
    """
    from mddose.data.io import load_patients

    preds = find_predictions(prediction)
    patients, bad = load_patients(reference, progress=progress)
    if not patients:
        why = f" ({bad[0][1]})" if bad else ""
        raise MddoseError(f"no reference patient could be read{why}", reference)
    res = EvaluationResult(reference=str(Path(reference).resolve()), prediction=str(Path(prediction).resolve()),
                           gamma=gamma)
    res.errors.extend(bad)
    ids = [p.id for p in patients]
    res.unmatched = [k for k in preds if k not in set(ids)]
    others = _other_files(Path(prediction), ids)
    if not any(i in preds or i in others for i in ids):
        raise MddoseError(f"no prediction matches a reference patient (references {_few(ids)}, "
                          f"predictions {_few(list(preds))})", prediction)
    for p in _progress(patients, progress):
        if p.id not in preds:
            if p.id in others:
                res.errors.append((p.id, str(MddoseError("unsupported prediction file (expected .csv, .nii or "
                                                         ".nii.gz)", others[p.id]))))
            else:
                res.missing.append(p.id)
            continue
        try:
            if p.dose is None:
                raise MddoseError(f"patient {p.id}: the reference has no dose")
            pred = read_prediction(preds[p.id], p)
            ref = _reference_dose(p) if pred.dtype == np.float64 else p.dose
            res.records.append(evaluate_patient(p, pred, gamma=gamma, reference_dose=ref))
        except (MddoseError, ValueError, OSError) as exc:
            logger.warning("skipping prediction of %s: %s", p.id, exc)
            res.errors.append((p.id, str(exc)))
    return res


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", … ({len(items)} in all)" if len(items) > n else "")


# ---------------------------------------------------------------------------------------- comparison
EVALUATION_DIR = "evaluation"
SUMMARY_JSON = "summary.json"
PER_PATIENT_CSV = "per_patient.csv"
COMPARE_COLUMNS = ("dose_error", "dvh_error", "HI_MDDose_error", "HI_ICRU83", "gamma_pass_rate")


def default_outputs(prediction: str | os.PathLike) -> tuple[Path, Path]:
    """(summary JSON, per-patient CSV) default locations: ``PRED/evaluation/``."""
    d = Path(prediction) / EVALUATION_DIR
    return d / SUMMARY_JSON, d / PER_PATIENT_CSV


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


def _reusable(run: Path, reference: Path, gamma: bool) -> Path | None:
    """RUN/evaluation/per_patient.csv if it was made against ``reference`` after every prediction file."""
    js, pp = default_outputs(run)
    if not (js.is_file() and pp.is_file()):
        return None
    try:
        summary = json.loads(js.read_text(encoding="utf-8"))
        preds = find_predictions(run)
    except (ValueError, MddoseError, OSError):
        return None
    if summary.get("reference") != str(reference.resolve()):
        return None
    if gamma and not summary.get("gamma"):
        return None
    newest = max(p.stat().st_mtime for p in preds.values())
    return pp if pp.stat().st_mtime >= newest and js.stat().st_mtime >= newest else None


def compare_runs(runs: list[str | os.PathLike], reference: str | os.PathLike, *, names: list[str] | None = None,
                 baseline: str | None = None, test: str = "t", gamma: bool = False, progress: bool = False):
    """Compare prediction directories on the same reference patients → :class:`stats.Comparison`.

    A run's ``evaluation/per_patient.csv`` is reused when it was computed against ``reference`` after
    its newest prediction file and has every compared column; otherwise the run is evaluated in memory
    (nothing is written).
    """
    from mddose.evaluate.stats import compare

    if names is not None and len(names) != len(runs):
        raise MddoseError(f"--names has {len(names)} names for {len(runs)} runs")
    names = names or [Path(r).resolve().name for r in runs]
    if len(set(names)) != len(names):
        raise MddoseError(f"run names must be distinct, got {names} (use --names)")
    values = {}
    for name, run in zip(names, runs):
        pp = _reusable(Path(run), Path(reference), gamma)
        cached = read_per_patient_csv(pp) if pp is not None else {}
        needed = [c for c in COMPARE_COLUMNS if c != "gamma_pass_rate" or gamma]
        if cached and all(c in cached for c in needed):
            logger.info("%s: reusing %s", name, pp)
            values[name] = cached
        else:
            res = evaluate_predictions(reference, run, gamma=gamma, progress=progress)
            if not res.records:
                raise MddoseError(f"run {name}: no prediction could be evaluated", run)
            values[name] = result_values(res)
    labels = {"dose_error": "Dose Score", "dvh_error": "DVH Score", "HI_MDDose_error": "HI (MD-Dose, mean Δσ/μ)",
              "HI_ICRU83": "HI ICRU83 (D2-D98)/D50", "gamma_pass_rate": "Gamma 3%/3mm pass rate"}
    metrics = [(c, labels[c]) for c in COMPARE_COLUMNS if any(c in v for v in values.values())]
    try:
        return compare(values, metrics=metrics, reference=baseline, test=test)
    except ValueError as exc:
        raise MddoseError(str(exc)) from None
