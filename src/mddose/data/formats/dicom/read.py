"""Read a DICOM-RT patient (CT series + RTSTRUCT + optional RTDOSE/RTPLAN) into a :class:`Patient`.

The parts live in their own modules — files (:mod:`~mddose.data.formats.dicom.files`), geometry
(:mod:`~mddose.data.formats.dicom.geometry`), the CT series (:mod:`~mddose.data.formats.dicom.ct`),
RTSTRUCT, RTDOSE, RTPLAN — and writing in :mod:`~mddose.data.formats.dicom.write`.

Conventions (see also :mod:`mddose.data.patient`):

* **Geometry.** The CT slices of one series are sorted by their ImagePositionPatient projected on the
  slice normal ``n = r × c`` (``r``, ``c`` = the row and column direction cosines of
  ImageOrientationPatient). Arrays are ``(z, y, x)`` = (slice, row, column); ``spacing`` is
  ``(slice spacing, PixelSpacing[0] (between rows), PixelSpacing[1] (between columns))``;
  ``origin`` is the IPP of the first slice; ``direction`` has columns ``r``, ``c``, ``n``. For a
  standard axial head-first-supine series (IOP ``[1,0,0, 0,1,0]``) this is the identity and the first
  slice is the most inferior one. Other orientations (feet first, prone, sagittal, ...) are **not**
  resampled or flipped: their direction is stored as read (so ``z`` then runs along ``n``, which may
  not be superior). Gantry-tilted (sheared) series are refused.
* **RTSTRUCT** (:mod:`~mddose.data.formats.dicom.rtstruct`). Each CLOSED_PLANAR contour is assigned to
  the nearest CT slice and rasterised on the voxel centres by an even–odd scanline fill (all contours of
  one ROI on one slice together), so holes drawn as separate contours are handled. POINT and OPEN
  contours are ignored. Names are mapped with :mod:`mddose.data.roi_names`. An incomplete RTSTRUCT (a
  truncated file, random bytes named ``.dcm``) is an error naming it, never a patient with missing ROIs.
* **RTDOSE** (:mod:`~mddose.data.formats.dicom.dose`). Pixel values × DoseGridScaling (Gy, > 0); frames at IPP + GridFrameOffsetVector·n (relative
  offsets; a non-zero first element is read as absolute positions, as the standard allows). The dose
  is resampled onto the CT voxel centres by trilinear interpolation; CT voxels outside the dose grid
  get 0. Several RTDOSE files: the single one with DoseSummationType PLAN is used, else BEAM doses are
  summed.
* **Possible-dose mask.** An ROI named ``PossibleDoseMask`` (written by mddose) if present, else the
  body outline (``Body``/``External``/... or the ROI with RTROIInterpretedType EXTERNAL), else
  ``CT > -500 HU``.
* **Patient id.** The folder's name (DICOM PatientID goes to ``meta["dicom"]``), made a safe file name
  by :func:`mddose.data.formats.common.reader_patient_id` when it is not one.
* **Prescriptions** (:mod:`~mddose.data.formats.dicom.rtplan`). From target names (``PTV70`` → 70 Gy); an RTPLAN's DoseReferenceSequence
  (TARGET with ReferencedROINumber and TargetPrescriptionDose) overrides them: ReferencedROINumber →
  the RTSTRUCT's ROI (its mddose name) → prescription. mddose writes such a plan with every patient
  that has a dose or prescribed targets, so a target named ``PTV`` keeps its prescription.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from mddose.data.formats.common import reader_patient_id
from mddose.data.formats.dicom.ct import choose_series, read_ct_series
from mddose.data.formats.dicom.dose import patient_dose
from mddose.data.formats.dicom.files import scan
from mddose.data.formats.dicom.rtplan import check_plan_structure_set, plan_prescriptions
from mddose.data.formats.dicom.rtstruct import check_rtstruct, rasterise_rtstruct
from mddose.data.patient import Patient
from mddose.data.roi_names import BODY, POSSIBLE_DOSE_ROI, prescription_from_name
from mddose.errors import MddoseError
from mddose.utils.log import logger

#: Threshold (HU) of the fallback possible-dose mask when there is no body outline.
BODY_HU_THRESHOLD = -500.0


def _one(items: list[tuple[Path, object]], what: str, directory: Path, for_uid: str | None):
    """The single item of ``items`` in frame of reference ``for_uid`` (all if none match), else error."""
    if len(items) > 1 and for_uid:
        same = [it for it in items if for_uid in _frames(it[1])]
        items = same or items
    if len(items) > 1:
        raise MddoseError(f"{len(items)} {what} files: " + ", ".join(p.name for p, _ in items) + "; keep one",
                          directory)
    return items[0] if items else None


def _frames(ds) -> set[str]:
    f = {str(fr.FrameOfReferenceUID) for fr in ds.get("ReferencedFrameOfReferenceSequence", [])
         if "FrameOfReferenceUID" in fr}
    if "FrameOfReferenceUID" in ds:
        f.add(str(ds.FrameOfReferenceUID))
    return f


def read_dicom_patient(directory: str | os.PathLike, roi_map: Mapping[str, str | None] | None = None, *,
                       series_uid: str | None = None, patient_id: str | None = None) -> Patient:
    """Read the DICOM-RT files under ``directory`` (searched recursively) into a :class:`Patient`.

    Args:
        directory: holds one CT series, at most one RTSTRUCT (optional), RTDOSE file(s) and RTPLAN.
        roi_map: DICOM ROI name → mddose name (keys case-insensitive/normalised; None drops the ROI),
            merged over :data:`mddose.data.roi_names.DEFAULT_ROI_MAP`.
        series_uid: the CT series to use when there are several (else the one the RTSTRUCT references).
        patient_id: the Patient's id (default: the directory name, made safe; DICOM PatientID goes to
            ``meta``).

    Returns a Patient whose ``meta["dicom"]`` holds the study/series/frame-of-reference/SOP UIDs.
    Raises :class:`MddoseError` (one line naming the file) on missing/ambiguous series, non-uniform
    slices, an RTSTRUCT/RTDOSE in another frame of reference, or an RTDOSE that misses the CT.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MddoseError("not a directory", directory)
    found_scan = scan(directory)
    found = found_scan.found
    if found_scan.ignored:
        logger.warning("%s: ignoring %d file(s) that are not DICOM: %s", directory, len(found_scan.ignored),
                       ", ".join(p.name for p in found_scan.ignored[:5]))
    structs = found.get("RTSTRUCT", [])
    if not found.get("CT"):
        other = ", ".join(sorted(m or "?" for m in found)) or "no DICOM files"
        raise MddoseError(f"no CT series found ({other})", directory)
    series = choose_series(found["CT"], directory, series_uid, structs)
    ct, grid, sop_uids = read_ct_series(series, found_scan.ignored)
    head = series[0][1]
    for_uid = str(head.FrameOfReferenceUID) if "FrameOfReferenceUID" in head else None
    meta_dicom = {
        "study_instance_uid": str(head.get("StudyInstanceUID", "")), "series_instance_uid":
        str(head.get("SeriesInstanceUID", "")), "frame_of_reference_uid": for_uid or "",
        "sop_instance_uids": sop_uids, "patient_id": str(head.get("PatientID", "")),
        "patient_name": str(head.get("PatientName", "")), "ct_files": len(series),
    }
    masks: dict[str, np.ndarray] = {}
    numbers: dict[int, str] = {}
    external: set[str] = set()
    struct = _one(structs, "RTSTRUCT", directory, for_uid)
    if struct is not None:
        check_rtstruct(struct[1], struct[0])
        masks, numbers, external = rasterise_rtstruct(struct[1], struct[0], grid, roi_map, for_uid)
        meta_dicom["rtstruct"] = str(struct[0])
    if found_scan.ignored:
        meta_dicom["ignored_files"] = [str(f.relative_to(directory)) for f in found_scan.ignored]
    dose = None
    if found.get("RTDOSE"):
        dose, used = patient_dose(found["RTDOSE"], grid, for_uid)
        meta_dicom["rtdose"] = used
    prescriptions = {n: rx for n in masks if (rx := prescription_from_name(n)) is not None}
    plan = _one(found.get("RTPLAN", []), "RTPLAN", directory, for_uid)
    if plan is not None:
        check_plan_structure_set(plan, struct)
        try:
            prescriptions.update(plan_prescriptions(plan[1], numbers))
        except MddoseError as exc:
            raise MddoseError(str(exc), plan[0]) from None
        meta_dicom["rtplan_sop_instance_uid"] = str(plan[1].get("SOPInstanceUID", ""))
        meta_dicom["rtplan"] = str(plan[0])             # its beams: mddose.data.priors.beams.patient_rtplan
    pdm, pdm_source = _possible_dose_mask(masks, external, ct)
    meta = {"source": str(directory), "format": "dicom", "possible_dose_mask": pdm_source, "dicom": meta_dicom}
    pid = patient_id if patient_id is not None else reader_patient_id(directory)
    return Patient(id=pid, ct=ct, spacing=grid.spacing, masks=masks, dose=dose,
                   possible_dose_mask=pdm, origin=tuple(grid.origin), direction=grid.direction,
                   prescriptions=prescriptions, meta=meta)


def _possible_dose_mask(masks: dict[str, np.ndarray], external: set[str], ct: np.ndarray) -> tuple[np.ndarray, str]:
    """(mask, where it came from); pops the ``PossibleDoseMask`` ROI out of ``masks``."""
    stored = masks.pop(POSSIBLE_DOSE_ROI, None)
    if stored is not None and stored.any():
        return stored, f"ROI {POSSIBLE_DOSE_ROI}"
    for name in [BODY, *sorted(external)]:
        if name in masks and masks[name].any():
            return masks[name].copy(), f"ROI {name}"
    return ct > BODY_HU_THRESHOLD, f"CT > {BODY_HU_THRESHOLD:g} HU"
