"""Clinical dose metrics per patient and ROI: D-metrics, V95 %, homogeneity and conformity indices.

Definitions (``D_x`` = dose covering x % of the ROI = ``np.percentile(roi, 100 − x)``, see
:mod:`mddose.evaluate.dvh`):

* targets: ``Dmean``, ``D0.1cc``, ``D2``, ``D50``, ``D95``, ``D98``, ``Dmax``, ``Dmin`` (Gy) and ``V95`` =
  fraction of the target receiving ≥ 95 % of **its** prescription;
* OARs: ``Dmean``, ``D0.1cc``, ``Dmax`` (Gy);
* homogeneity indices of the **primary target** (highest prescription), each labelled with its formula
  in outputs (:data:`HI_DEFINITIONS`):

  - ``HI_ICRU83`` = (D2 − D98) / D50 (ICRU Report 83, 2010);
  - ``HI_std_mean`` = σ / μ of the target dose — the heterogeneity index of the MD-Dose authors' released
    evaluation code (``evaluate.py`` of github.com/LinjieFu-U/mamba_dose, function ``HI``), which there is
    applied to whole 2D dose images, not to a PTV;
  - ``HI_maxmin`` = (Dmax − Dmin) / Dmean, a variant often quoted for DiffDP-style papers (not verified
    against the DiffDP text, which was not available offline);

* ``HI_MDDose_error`` (:func:`hi_slice_error`, needs a reference): what MD-Dose's Table 1 reports as "HI" per
  the authors' code — the mean over axial slices of |σ/μ(predicted slice) − σ/μ(reference slice)|, σ/μ over
  the whole slice (every voxel, as their 2D images), slices where the reference has dose;
* ``CI_Paddick`` = TV_PIV² / (TV × PIV) at the prescription isodose of each target, where TV = the union
  of targets prescribed at least that dose (in a simultaneous-boost plan the 56 Gy isodose is meant to
  cover the 63 and 70 Gy targets too), PIV = all voxels with dose ≥ prescription, TV_PIV = their
  intersection. 1 = perfect conformity.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from mddose.evaluate.dvh import dose_at_cc, dose_at_volume, volume_at_dose

#: Labels of the homogeneity indices (written into outputs).
HI_DEFINITIONS: dict[str, str] = {
    "HI_ICRU83": "(D2 - D98) / D50 of the primary PTV (ICRU Report 83)",
    "HI_std_mean": "std / mean of the dose in the primary PTV (sigma/mu index of the MD-Dose authors' "
                   "evaluate.py, github.com/LinjieFu-U/mamba_dose, there applied to whole 2D dose images)",
    "HI_maxmin": "(Dmax - Dmin) / Dmean of the primary PTV (variant often quoted for DiffDP; unverified)",
}
#: Label of the per-patient MD-Dose Table-1 HI metric (see :func:`hi_slice_error`).
HI_MDDOSE_DEFINITION = ("mean over axial slices with reference dose of |std/mean(predicted slice) - "
                        "std/mean(reference slice)|, whole slices (MD-Dose authors' evaluate.py, function HI)")
TARGET_METRICS: tuple[str, ...] = ("Dmean", "D0.1cc", "D2", "D50", "D95", "D98", "Dmax", "Dmin", "V95")
OAR_METRICS: tuple[str, ...] = ("Dmean", "D0.1cc", "Dmax")


def target_metrics(roi_dose: np.ndarray, prescription: float, voxel_volume_mm3: float) -> dict[str, float]:
    """Target metrics (Gy; V95 as a fraction) of (N,) target doses with prescription ``prescription`` Gy."""
    d = np.asarray(roi_dose, dtype=np.float64)
    return {
        "Dmean": float(d.mean()), "D0.1cc": dose_at_cc(d, voxel_volume_mm3),
        "D2": dose_at_volume(d, 2), "D50": dose_at_volume(d, 50), "D95": dose_at_volume(d, 95),
        "D98": dose_at_volume(d, 98), "Dmax": float(d.max()), "Dmin": float(d.min()),
        "V95": volume_at_dose(d, 0.95 * prescription),
    }


def oar_metrics(roi_dose: np.ndarray, voxel_volume_mm3: float) -> dict[str, float]:
    """OAR metrics (Gy) of (N,) OAR doses."""
    d = np.asarray(roi_dose, dtype=np.float64)
    return {"Dmean": float(d.mean()), "D0.1cc": dose_at_cc(d, voxel_volume_mm3), "Dmax": float(d.max())}


def hi_icru83(roi_dose: np.ndarray) -> float:
    """ICRU-83 homogeneity index (D2 − D98) / D50 of (N,) target doses (NaN if D50 = 0)."""
    d50 = dose_at_volume(roi_dose, 50)
    return (dose_at_volume(roi_dose, 2) - dose_at_volume(roi_dose, 98)) / d50 if d50 > 0 else math.nan


def hi_maxmin(roi_dose: np.ndarray) -> float:
    """Homogeneity index (Dmax − Dmin) / Dmean of (N,) target doses (NaN if Dmean = 0)."""
    d = np.asarray(roi_dose, dtype=np.float64)
    mean = float(d.mean())
    return (float(d.max()) - float(d.min())) / mean if mean > 0 else math.nan


def hi_std_mean(roi_dose: np.ndarray) -> float:
    """Heterogeneity index σ / μ (population std, as ``np.std``) of (N,) doses (NaN if μ = 0)."""
    d = np.asarray(roi_dose, dtype=np.float64)
    mean = float(d.mean())
    return float(d.std()) / mean if mean > 0 else math.nan


def hi_slice_error(reference: np.ndarray, prediction: np.ndarray) -> float:
    """MD-Dose's Table-1 "HI": mean over axial slices of |σ/μ(prediction) − σ/μ(reference)|.

    Args:
        reference, prediction: (Z, Y, X) dose. σ and μ are taken over each whole (Y, X) slice, as the
            authors' code does on its 2D dose images; slices where the reference is all zero are skipped
            and a zero mean is replaced by 1e-10, as there. NaN if no slice has reference dose.
    """
    ref = np.asarray(reference, dtype=np.float64)
    pred = np.asarray(prediction, dtype=np.float64)
    keep = ref.reshape(ref.shape[0], -1).max(axis=1) > 0
    if not keep.any():
        return math.nan

    def hi(a: np.ndarray) -> np.ndarray:
        flat = a[keep].reshape(int(keep.sum()), -1)
        return flat.std(axis=1) / np.maximum(flat.mean(axis=1), 1e-10)

    return float(np.mean(np.abs(hi(pred) - hi(ref))))


def paddick_ci(dose: np.ndarray, target: np.ndarray, prescription: float) -> float:
    """Paddick conformity index TV_PIV² / (TV × PIV) (NaN if TV or PIV is empty).

    Args:
        dose: (Z, Y, X) Gy.
        target: (Z, Y, X) bool, the target volume TV.
        prescription: Gy; PIV = voxels with dose ≥ prescription.
    """
    piv = np.asarray(dose) >= prescription
    tv = int(np.count_nonzero(target))
    n_piv = int(np.count_nonzero(piv))
    if tv == 0 or n_piv == 0:
        return math.nan
    tv_piv = int(np.count_nonzero(piv & target))
    return tv_piv * tv_piv / (tv * n_piv)


def primary_target(masks: Mapping[str, np.ndarray], prescriptions: Mapping[str, float]) -> str | None:
    """Name of the non-empty target with the highest prescription, or None."""
    present = [n for n in prescriptions if n in masks and np.any(masks[n])]
    return max(present, key=lambda n: prescriptions[n]) if present else None


def clinical_metrics(dose: np.ndarray, masks: Mapping[str, np.ndarray], prescriptions: Mapping[str, float],
                     spacing) -> dict[str, float]:
    """Every clinical metric of one dose distribution as a flat dict ``{"METRIC|ROI": value}``.

    Args:
        dose: (Z, Y, X) Gy.
        masks: ROI name → (Z, Y, X) bool; empty ROIs are skipped.
        prescriptions: target name → Gy (which ROIs are targets).
        spacing: voxel sizes (mm).

    Keys: ``"<metric>|<ROI>"`` for each ROI, ``"CI_Paddick|<target>"``, and the homogeneity indices
    of :data:`HI_DEFINITIONS` (primary target, see :func:`primary_target`).
    """
    dose = np.asarray(dose)
    vol = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    out: dict[str, float] = {}
    for name, m in masks.items():
        m = np.asarray(m, dtype=bool)
        if not m.any():
            continue
        roi = dose[m]
        if name in prescriptions:
            rx = float(prescriptions[name])
            out.update({f"{k}|{name}": v for k, v in target_metrics(roi, rx, vol).items()})
            tv = np.zeros(dose.shape, dtype=bool)
            for other, orx in prescriptions.items():
                if other in masks and orx >= rx:
                    tv |= np.asarray(masks[other], dtype=bool)
            out[f"CI_Paddick|{name}"] = paddick_ci(dose, tv, rx)
        else:
            out.update({f"{k}|{name}": v for k, v in oar_metrics(roi, vol).items()})
    primary = primary_target(masks, prescriptions)
    if primary is not None:
        roi = dose[np.asarray(masks[primary], dtype=bool)]
        out["HI_ICRU83"] = hi_icru83(roi)
        out["HI_std_mean"] = hi_std_mean(roi)
        out["HI_maxmin"] = hi_maxmin(roi)
    return out
