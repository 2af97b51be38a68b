"""The OpenKBP challenge scores, computed exactly as the challenge's evaluator does.

Conventions of the official evaluator (``DoseEvaluator`` in ababier/open-kbp, provided_code), reproduced
here and checked against its numbers in ``openkbp-reference/expected_scores.json``:

* **Dose error** of a patient = ``Σ |reference − prediction|`` over the **whole grid** (the prediction is
  *not* multiplied by the possible-dose mask) ÷ the number of voxels in the possible-dose mask. The mask
  is part of the data (``possible_dose_mask.csv``); a patient without one is refused, not scored over the
  whole grid.
  **Dose score** = mean over patients.
* **DVH metrics** are computed on the voxels of each ROI of the reference patient (the prediction's
  masks are the reference's):

  - targets: ``D_99`` = ``np.percentile(roi_dose, 1)``, ``D_95`` = percentile 5, ``D_1`` = percentile 99;
  - OARs: ``D_0.1_cc`` = ``np.percentile(roi_dose, 100 − n / roi_voxels × 100)`` with
    ``n = max(1, round(100 / voxel_volume_mm³))`` voxels per 0.1 cc (``np.round``: half to even);
    ``mean`` = mean dose of the ROI.

  ``np.percentile`` uses its default *linear* interpolation. An ROI that is absent or empty is skipped
  (its metrics are ``None``).
* **DVH score** = mean of ``|metric(reference) − metric(prediction)|`` over every present
  (patient, ROI, metric).

Everything is computed in float64 whatever the input dtype. Inputs are NumPy arrays of one grid
(any axis order, as long as dose and masks share it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from mddose.data.patient import OPENKBP_OARS, OPENKBP_TARGETS

#: DVH metrics of the OpenKBP challenge, per ROI kind.
OAR_METRICS: tuple[str, ...] = ("D_0.1_cc", "mean")
TARGET_METRICS: tuple[str, ...] = ("D_99", "D_95", "D_1")

#: Target percentile used for each target metric (``D_x`` = dose received by x % of the ROI).
_TARGET_PERCENTILE = {"D_99": 1.0, "D_95": 5.0, "D_1": 99.0}


def voxels_in_tenth_cc(voxel_volume_mm3: float) -> float:
    """Number of voxels standing for 0.1 cc, as the official code rounds it: ``max(1, round(100 / v))``."""
    if not (np.isfinite(voxel_volume_mm3) and voxel_volume_mm3 > 0):
        raise ValueError(f"voxel volume must be positive, got {voxel_volume_mm3}")
    return float(np.maximum(1, np.round(100.0 / voxel_volume_mm3)))


def voxel_volume_mm3(spacing: Sequence[float]) -> float:
    """Voxel volume in mm³ from the three voxel sizes (``np.prod``, as the official code)."""
    return float(np.prod(np.asarray(spacing, dtype=np.float64)))


def dose_error(reference: np.ndarray, prediction: np.ndarray, possible_dose_mask: np.ndarray) -> float:
    """OpenKBP per-patient dose error: Σ|reference − prediction| over the whole grid ÷ Σ possible_dose_mask.

    Args:
        reference, prediction: (Z, Y, X) dose in Gy (any shape, equal).
        possible_dose_mask: (Z, Y, X) bool; must contain at least one voxel.
    """
    reference = np.asarray(reference)
    prediction = np.asarray(prediction)
    if reference.shape != prediction.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference {reference.shape}")
    n = int(np.count_nonzero(possible_dose_mask))
    if n == 0:
        raise ValueError("possible-dose mask is empty")
    diff = np.abs(reference.astype(np.float64).ravel() - prediction.astype(np.float64).ravel())
    return float(np.sum(diff) / n)


def d_tenth_cc(roi_dose: np.ndarray, voxel_volume: float) -> float:
    """``D_0.1_cc`` of one ROI: (N,) doses of its voxels; ``voxel_volume`` in mm³.

    The percentile is clipped to [0, 100] for ROIs smaller than 0.1 cc (the official code would fail).
    """
    roi_dose = np.asarray(roi_dose, dtype=np.float64)
    n = voxels_in_tenth_cc(voxel_volume)
    q = 100 - n / len(roi_dose) * 100
    return float(np.percentile(roi_dose, min(100.0, max(0.0, q))))


def metric_key(metric: str, roi: str) -> str:
    """Key ``"METRIC|ROI"`` used in results (as in expected_scores.json)."""
    return f"{metric}|{roi}"


def dvh_metrics(dose: np.ndarray, masks: Mapping[str, np.ndarray], voxel_volume: float, *,
                targets: Iterable[str], oars: Iterable[str]) -> dict[str, float | None]:
    """OpenKBP DVH metrics of one dose distribution.

    Args:
        dose: (Z, Y, X) Gy.
        masks: ROI name → (Z, Y, X) bool (of the *reference* patient).
        voxel_volume: mm³.
        targets, oars: ROI names to report (in this order: OARs first, then targets, as the official
            table); a name absent from ``masks`` or with an empty mask gives ``None`` values.

    Returns:
        ``{"METRIC|ROI": value or None}``.
    """
    flat = np.asarray(dose, dtype=np.float64).ravel()
    out: dict[str, float | None] = {}
    for roi in oars:
        roi_dose = _roi_dose(flat, masks.get(roi))
        for metric in OAR_METRICS:
            if roi_dose is None:
                out[metric_key(metric, roi)] = None
            elif metric == "mean":
                out[metric_key(metric, roi)] = float(roi_dose.mean())
            else:
                out[metric_key(metric, roi)] = d_tenth_cc(roi_dose, voxel_volume)
    for roi in targets:
        roi_dose = _roi_dose(flat, masks.get(roi))
        for metric in TARGET_METRICS:
            out[metric_key(metric, roi)] = (
                None if roi_dose is None else float(np.percentile(roi_dose, _TARGET_PERCENTILE[metric])))
    return out


def _roi_dose(flat_dose: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask, dtype=bool).ravel()
    if m.size != flat_dose.size:
        raise ValueError(f"mask has {m.size} voxels, dose has {flat_dose.size}")
    if not m.any():
        return None
    return flat_dose[m]


def dvh_differences(reference: Mapping[str, float | None],
                    prediction: Mapping[str, float | None]) -> dict[str, float]:
    """``|reference − prediction|`` for every key present (non-None) in both."""
    return {k: abs(float(reference[k]) - float(prediction[k])) for k in reference
            if reference[k] is not None and prediction.get(k) is not None}


def roi_lists(mask_names: Iterable[str], prescriptions: Mapping[str, float]) -> tuple[list[str], list[str]]:
    """(OAR names, target names) to report for a patient.

    The OpenKBP ROIs are always listed (absent ones give ``None``, as the official table) in the
    official order (OARs as in ``OPENKBP_OARS``, targets PTV56, PTV63, PTV70); other ROIs follow:
    names with a prescription are targets (ascending prescription), the rest OARs.
    """
    names = list(mask_names)
    oars = list(OPENKBP_OARS) + [n for n in names if n not in prescriptions and n not in OPENKBP_OARS]
    std_targets = sorted(OPENKBP_TARGETS, key=lambda n: OPENKBP_TARGETS[n])
    extra = sorted((n for n in names if n in prescriptions and n not in OPENKBP_TARGETS),
                   key=lambda n: prescriptions[n])
    if not any(n in OPENKBP_OARS or n in OPENKBP_TARGETS for n in names):
        oars = [n for n in oars if n not in OPENKBP_OARS]
        std_targets = []
    return oars, std_targets + extra


@dataclass
class OpenKBPScores:
    """Scores of a prediction set (patients in evaluation order).

    Attributes:
        dose_errors: patient id → dose error (Gy).
        dvh_reference, dvh_prediction: patient id → ``{"METRIC|ROI": value or None}``.
    """

    dose_errors: dict[str, float] = field(default_factory=dict)
    dvh_reference: dict[str, dict[str, float | None]] = field(default_factory=dict)
    dvh_prediction: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def add(self, pid: str, error: float, ref: dict[str, float | None], pred: dict[str, float | None]) -> None:
        self.dose_errors[pid] = error
        self.dvh_reference[pid] = ref
        self.dvh_prediction[pid] = pred

    @property
    def dose_score(self) -> float:
        """Mean dose error over patients (NaN if none)."""
        vals = list(self.dose_errors.values())
        return float(np.mean(vals)) if vals else math.nan

    def dvh_errors(self, pid: str) -> dict[str, float]:
        """|reference − prediction| of every present DVH metric of one patient."""
        return dvh_differences(self.dvh_reference[pid], self.dvh_prediction[pid])

    def patient_dvh_error(self, pid: str) -> float:
        """Mean |difference| over the present DVH metrics of one patient (NaN if none)."""
        vals = list(self.dvh_errors(pid).values())
        return float(np.mean(vals)) if vals else math.nan

    @property
    def dvh_score(self) -> float:
        """Mean |difference| over every present (patient, ROI, metric) — not a mean of patient means."""
        vals = [v for pid in self.dvh_reference for v in self.dvh_errors(pid).values()]
        return float(np.mean(vals)) if vals else math.nan


def score_patient(reference_dose: np.ndarray, prediction: np.ndarray, masks: Mapping[str, np.ndarray],
                  possible_dose_mask: np.ndarray | None, spacing: Sequence[float],
                  prescriptions: Mapping[str, float]) -> tuple[float, dict, dict]:
    """(dose error, reference DVH metrics, prediction DVH metrics) of one patient.

    Args:
        reference_dose, prediction: (Z, Y, X) Gy.
        masks: ROI name → (Z, Y, X) bool.
        possible_dose_mask: (Z, Y, X) bool, required: the dose error divides by its voxel count. A
            missing mask is refused (ValueError), never replaced by the whole grid, which would divide by
            every voxel and give a far too small error (e.g. 0.98 Gy instead of 31.5 Gy). The OpenKBP
            evaluator reads the mask shipped with each patient (``possible_dose_mask.csv``); it does not
            derive one, so neither does mddose.
        spacing: voxel sizes in mm.
        prescriptions: target name → Gy (which names are targets).
    """
    if possible_dose_mask is None:
        raise ValueError("no possible-dose mask: the OpenKBP dose error divides by its voxel count")
    err = dose_error(reference_dose, prediction, possible_dose_mask)
    vol = voxel_volume_mm3(spacing)
    oars, targets = roi_lists(masks, prescriptions)
    ref = dvh_metrics(reference_dose, masks, vol, targets=targets, oars=oars)
    pred = dvh_metrics(prediction, masks, vol, targets=targets, oars=oars)
    return err, ref, pred

