"""RTPLAN → target prescriptions (the DoseReferenceSequence), and the plan ↔ structure-set consistency check."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from mddose.errors import MddoseError
from mddose.utils.log import logger


def plan_prescriptions(ds, numbers: Mapping[int, str]) -> dict[str, float]:
    """Target ROI name → TargetPrescriptionDose (Gy) from an RTPLAN's DoseReferenceSequence."""
    out: dict[str, float] = {}
    for ref in ds.get("DoseReferenceSequence", []):
        if str(ref.get("DoseReferenceType", "")).upper() != "TARGET":
            continue
        num, rx = ref.get("ReferencedROINumber", None), ref.get("TargetPrescriptionDose", None)
        if num is None or rx is None:
            continue
        try:
            num, rx = int(num), float(rx)
        except (TypeError, ValueError):
            raise MddoseError(f"RTPLAN DoseReferenceSequence: ReferencedROINumber {num!r} / "
                              f"TargetPrescriptionDose {rx!r} are not numbers") from None
        if num in numbers and np.isfinite(rx) and rx > 0:
            out[numbers[num]] = rx
    return out


def check_plan_structure_set(plan: tuple[Path, object], struct: tuple[Path, object] | None) -> None:
    """Warn when the RTPLAN references a structure set other than the RTSTRUCT read (ROI numbers may differ)."""
    referenced = {str(r.ReferencedSOPInstanceUID) for r in plan[1].get("ReferencedStructureSetSequence", [])
                  if "ReferencedSOPInstanceUID" in r}
    if struct is not None and referenced and str(struct[1].get("SOPInstanceUID", "")) not in referenced:
        logger.warning("%s: the RTPLAN references another structure set than %s; its ReferencedROINumbers "
                       "are read against that RTSTRUCT's ROI numbers", plan[0], struct[0].name)
