"""What ``mddose data inspect`` reports about a patient: its summary and its problems.

A *problem* is something readable but suspicious that would make training or scoring silently wrong:

* an empty ROI, no target ROI, overlapping targets;
* **no possible-dose mask** — a score over the whole grid (air included) is far too low (OpenKBP scores
  only inside the mask);
* dose outside the possible-dose mask, a target outside it;
* **duplicate voxel indices** in an OpenKBP CSV (the reader keeps the last row; counted by
  :mod:`mddose.data.formats.openkbp` in ``meta["duplicate_indices"]``);
* **a dose above** :data:`PLAUSIBLE_MAX_DOSE_GY` — no external-beam plan reaches it (OpenKBP's maxima are
  about 80–90 Gy; SBRT hot spots stay well below); it means wrong units or a wrong DoseGridScaling;
* DICOM files that were not DICOM and were ignored;
* (in a batch, :func:`duplicate_id_problems`) an id that another patient of the batch has.
"""

from __future__ import annotations

import numpy as np

from mddose.data.patient import Patient

#: A dose maximum above this (Gy) is listed as implausible (wrong units or scaling).
PLAUSIBLE_MAX_DOSE_GY = 150.0


def _mask_problems(patient: Patient) -> list[str]:
    problems = [f"ROI {n!r} is empty" for n, m in patient.masks.items() if not m.any()]
    if not patient.masks:
        problems.append("no ROIs at all")
    targets = patient.targets
    if not targets:
        problems.append("no target ROI (none of " + ", ".join(patient.prescriptions) + ")")
    for i, a in enumerate(targets):
        for b in targets[i + 1:]:
            n = int(np.count_nonzero(patient.masks[a] & patient.masks[b]))
            if n:
                problems.append(f"targets {a} and {b} overlap in {n} voxels")
    return problems


def _dose_mask_problems(patient: Patient) -> list[str]:
    pdm = patient.possible_dose_mask
    if pdm is None:
        return ["no possible-dose mask (scores would count every voxel of the grid)"]
    problems = []
    if patient.dose is not None:
        outside = (patient.dose > 0) & ~pdm
        n = int(np.count_nonzero(outside))
        if n:
            problems.append(f"dose > 0 in {n} voxels outside the possible-dose mask "
                            f"(max {float(patient.dose[outside].max()):.3g} Gy)")
    for t in patient.targets:
        n = int(np.count_nonzero(patient.masks[t] & ~pdm))
        if n:
            problems.append(f"target {t} has {n} voxels outside the possible-dose mask")
    return problems


def find_problems(patient: Patient) -> list[str]:
    """Human-readable problems of a patient (see the module docstring); [] when there is none."""
    problems = _mask_problems(patient) + _dose_mask_problems(patient)
    if patient.dose is not None and patient.dose.size:
        top = float(patient.dose.max())
        if top > PLAUSIBLE_MAX_DOSE_GY:
            problems.append(f"dose maximum {top:.4g} Gy is above a plausible {PLAUSIBLE_MAX_DOSE_GY:g} Gy "
                            "(wrong units or dose scaling?)")
    for name, n in sorted(dict(patient.meta.get("duplicate_indices") or {}).items()):
        problems.append(f"{name} lists {n} voxel index(es) more than once (the last value was kept)")
    dicom = patient.meta.get("dicom")
    ignored = dicom.get("ignored_files") if isinstance(dicom, dict) else None
    if ignored:
        problems.append(f"{len(ignored)} file(s) that are not DICOM were ignored: {', '.join(ignored[:5])}")
    return problems


def inspect_patient(patient: Patient) -> dict:
    """JSON-ready report: :meth:`Patient.summary` plus ``targets`` (prescriptions), ``format``,
    ``source``, per-ROI ``mean_dose`` and ``problems``."""
    info = patient.summary()
    info["targets"] = {t: patient.prescriptions[t] for t in patient.targets}
    info["format"] = patient.meta.get("format")
    info["source"] = patient.meta.get("source")
    if patient.dose is not None:
        for name, roi in info["rois"].items():
            m = patient.masks[name]
            roi["mean_dose"] = float(patient.dose[m].mean()) if roi["voxels"] else None
    info["problems"] = find_problems(patient)
    return info


def duplicate_id_problems(patients: list[Patient]) -> list[list[str]]:
    """Per patient of a batch (same order), the problem ``"patient id 'x' is also the id of <source>"`` when
    another patient has its id (``predict`` and ``evaluate`` refuse both; ``inspect`` only lists it)."""
    by_id: dict[str, list[str]] = {}
    for p in patients:
        by_id.setdefault(p.id, []).append(str(p.meta.get("source", "?")))
    out = []
    for p in patients:
        sources = by_id[p.id]
        others = [s for s in sources if s != str(p.meta.get("source", "?"))] or sources[1:]
        out.append([f"patient id {p.id!r} is also the id of {', '.join(others)} (predict and evaluate refuse "
                    "both)"] if len(sources) > 1 else [])
    return out
