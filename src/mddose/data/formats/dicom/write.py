"""Write a :class:`Patient` as DICOM-RT: a CT series, an RTSTRUCT, an RTPLAN and an RTDOSE.

Conventions:

* **CT**: one file per slice ``CT.<k>.dcm`` (k = array index z), signed int16 pixels with
  RescaleSlope 1 and RescaleIntercept -1024 (HU rounded to integers, so the round trip is exact to
  ±0.5 HU; a CT outside [-33792, 31743] HU gets a larger slope). IPP of slice k = origin +
  k·sz·direction[:, 2]; IOP = direction columns 0 and 1; PixelSpacing = (sy, sx) = (row, column).
* **RTSTRUCT**: every mask, contoured slice by slice with contourpy (matplotlib's contouring library,
  marching squares) at level 0.5 on the zero-padded mask. The contour then passes half-way between
  inside and outside voxel centres, so rasterising it back on the voxel centres (even–odd rule)
  gives the same mask (exactly collinear vertices are dropped). The patient's possible-dose mask is
  stored as ROI ``PossibleDoseMask`` (type CONTROL) unless it equals the ``Body`` mask.
* **RTDOSE**: unsigned 32-bit pixels, DoseGridScaling = (max dose / 4e9) written with 7 significant
  digits, the pixels computed with the scaling as written: the largest pixel is about 4.0e9
  (< 2^32 - 1) and the quantisation error is at most DoseGridScaling / 2 (~1e-8 Gy for 70 Gy).
  DoseUnits GY, DoseType PHYSICAL, DoseSummationType PLAN, GridFrameOffsetVector relative to the
  first frame (k·sz). Negative doses are clipped to 0. ReferencedRTPlanSequence (required for PLAN
  doses) holds the RTPLAN written with the patient by :func:`write_dicom_patient`; :func:`write_rtdose`
  alone references the RTPLAN read with the patient, else a placeholder UID.
* **RTPLAN** (written when the patient has a dose or a target prescription): a minimal plan
  (RTPlanGeometry PATIENT, no beams) referencing the RTSTRUCT (ReferencedStructureSetSequence) and
  holding the prescriptions: one DoseReferenceSequence item per target of ``patient.prescriptions``
  that has a mask (DoseReferenceStructureType VOLUME, DoseReferenceType TARGET, ReferencedROINumber
  of that ROI, TargetPrescriptionDose in Gy). The reader takes prescriptions from it, so target names
  without a dose (``PTV``) keep theirs through a round trip.
* **UIDs**: StudyInstanceUID and FrameOfReferenceUID are kept from ``patient.meta["dicom"]`` when the
  patient was read from DICOM (same patient, same coordinates); every series and SOP instance gets a
  new UID from :func:`pydicom.uid.generate_uid`. :func:`write_rtdose` alone references the CT in
  ``patient.meta["dicom"]`` (study, frame of reference, CT slices in ReferencedImageSequence).
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mddose.data.formats.dicom.geometry import Grid
from mddose.data.patient import Patient
from mddose.data.roi_names import BODY, POSSIBLE_DOSE_ROI
from mddose.errors import MddoseError
from mddose.utils.fs import atomic_dir, atomic_save
from mddose.utils.log import log_once

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # (retired) Detached Study Management, as TPSs use
#: The largest stored RTDOSE pixel value (about 93% of 2^32 - 1).
DOSE_MAX_PIXEL = 4.0e9
_PALETTE = [(255, 0, 0), (0, 160, 255), (0, 200, 0), (255, 160, 0), (200, 0, 200), (0, 200, 200),
            (255, 255, 0), (128, 64, 0), (255, 128, 192), (128, 128, 255)]


@dataclass
class DicomRefs:
    """The UIDs and names shared by the files of one patient."""

    study_uid: str
    frame_of_reference_uid: str
    patient_id: str
    patient_name: str
    ct_series_uid: str = ""
    ct_sop_uids: list[str] = field(default_factory=list)
    rtplan_sop_uid: str = ""
    rtstruct_sop_uid: str = ""
    roi_numbers: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_patient(cls, patient: Patient, new_ct: bool) -> "DicomRefs":
        """Study/frame of reference from ``patient.meta["dicom"]`` (else new); a new CT series if ``new_ct``."""
        from pydicom.uid import generate_uid

        m = patient.meta.get("dicom", {}) if isinstance(patient.meta, dict) else {}
        refs = cls(m.get("study_instance_uid") or generate_uid(), m.get("frame_of_reference_uid") or generate_uid(),
                   m.get("patient_id") or patient.id, m.get("patient_name") or patient.id,
                   rtplan_sop_uid=m.get("rtplan_sop_instance_uid", ""))
        if new_ct:
            refs.ct_series_uid = generate_uid()
            refs.ct_sop_uids = [generate_uid() for _ in range(patient.shape[0])]
        else:
            refs.ct_series_uid = m.get("series_instance_uid", "")
            refs.ct_sop_uids = list(m.get("sop_instance_uids", []))
        return refs


def _ds(v: float) -> str:
    """A decimal string of at most 16 characters."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(v))


def _dataset(sop_class: str, modality: str, refs: DicomRefs, series_uid: str, sop_uid: str | None = None):
    """A Dataset with file meta and the patient/study/series/equipment/SOP common modules."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    sop_uid = sop_uid or generate_uid()
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = fm
    now = _dt.datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.StudyDate, ds.StudyTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = modality, "mddose", "mddose"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = refs.patient_name, refs.patient_id, "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = refs.study_uid, series_uid
    ds.SeriesNumber = {"CT": 1, "RTSTRUCT": 2, "RTDOSE": 3, "RTPLAN": 4}.get(modality, 9)
    if modality.startswith("RT"):
        ds.OperatorsName = ""
    return ds


def _geometry(ds, grid: Grid, k: int | None = None) -> None:
    """ImagePositionPatient (of slice k, else the origin), ImageOrientationPatient, PixelSpacing, thickness."""
    sz, sy, sx = grid.spacing
    d = np.asarray(grid.direction, float)
    ipp = grid.origin + (0 if k is None else k * sz) * d[:, 2]
    ds.ImagePositionPatient = [_ds(v) for v in ipp]
    ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([d[:, 0], d[:, 1]])]
    ds.PixelSpacing = [_ds(sy), _ds(sx)]
    ds.SliceThickness = _ds(sz)
    ds.PositionReferenceIndicator = ""


def _save(ds, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)


# ---------------------------------------------------------------------------------------- CT
def _ct_rescale(ct: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) mapping HU onto int16: 1 and -1024 unless the CT range needs more."""
    lo, hi = (float(ct.min()), float(ct.max())) if ct.size else (0.0, 0.0)
    if lo >= -1024 - 32768 and hi <= 32767 - 1024:
        return 1.0, -1024.0
    slope = float(_ds((hi - lo) / 65000.0))
    return slope, float(_ds(lo + 32000 * slope))


def write_ct_series(patient: Patient, directory: Path, refs: DicomRefs) -> list[Path]:
    """Write ``patient.ct`` as ``directory/CT.<k>.dcm`` (one file per slice); returns the paths."""
    grid = Grid.of(patient)
    slope, intercept = _ct_rescale(patient.ct)
    stored = np.clip(np.rint((patient.ct - intercept) / slope), -32768, 32767).astype("<i2")
    paths = []
    for k in range(patient.shape[0]):
        ds = _dataset(CT_IMAGE_STORAGE, "CT", refs, refs.ct_series_uid, refs.ct_sop_uids[k])
        ds.FrameOfReferenceUID = refs.frame_of_reference_uid
        _geometry(ds, grid, k)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.SliceLocation = _ds(float(grid.index_to_world(np.array([[0.0, 0.0, k]]))[0] @ grid.direction[:, 2]))
        ds.Rows, ds.Columns = patient.shape[1], patient.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "HU"
        ds.KVP, ds.AcquisitionNumber = "", ""
        ds.PatientPosition = "HFS" if np.allclose(grid.direction, np.eye(3)) else ""
        ds.PixelData = stored[k].tobytes()
        ds["PixelData"].VR = "OW"
        path = directory / f"CT.{k:04d}.dcm"
        _save(ds, path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------- RTSTRUCT
def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a (Y, X) bool slice: list of (N, 2) float (x, y) index coordinates.

    Marching squares (contourpy) at level 0.5 on the mask padded with zeros, so every contour is
    closed; the repeated closing point and exactly collinear vertices are removed.
    """
    import contourpy

    if not mask.any():
        return []
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    y0, x0 = rows[0], cols[0]
    crop = mask[y0:rows[-1] + 1, x0:cols[-1] + 1]
    gen = contourpy.contour_generator(z=np.pad(crop, 1).astype(np.float64), line_type="Separate")
    out = []
    for line in gen.lines(0.5):
        pts = line[:-1] if len(line) > 1 and np.array_equal(line[0], line[-1]) else line
        prev, nxt = np.roll(pts, 1, 0), np.roll(pts, -1, 0)
        cross = (pts - prev)[:, 0] * (nxt - pts)[:, 1] - (pts - prev)[:, 1] * (nxt - pts)[:, 0]
        pts = pts[np.abs(cross) > 1e-9]
        if len(pts) >= 3:
            out.append(pts + np.array([x0 - 1.0, y0 - 1.0]))
    return out


def _contour_data(world: np.ndarray) -> list[str]:
    """(N, 3) LPS mm → flat list of short decimal strings (0.1 µm resolution)."""
    return [("%.4f" % v).rstrip("0").rstrip(".") or "0" for v in world.ravel()]


def _structure_masks(patient: Patient) -> dict[str, np.ndarray]:
    masks = dict(patient.masks)
    pdm = patient.possible_dose_mask
    if pdm is not None and not (BODY in masks and np.array_equal(masks[BODY], pdm)):
        masks[POSSIBLE_DOSE_ROI] = pdm
    return masks


def write_rtstruct(patient: Patient, path: Path, refs: DicomRefs) -> Path:
    """Write every mask of ``patient`` (and its possible-dose mask) as an RTSTRUCT at ``path``.

    Records the RTSTRUCT's SOPInstanceUID and the ROI numbers (name → ROINumber) in ``refs``.
    """
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    grid = Grid.of(patient)
    ds = _dataset(RT_STRUCT_STORAGE, "RTSTRUCT", refs, generate_uid(), refs.rtstruct_sop_uid or None)
    refs.rtstruct_sop_uid = str(ds.SOPInstanceUID)
    refs.roi_numbers = {}
    ds.StructureSetLabel, ds.StructureSetName = "mddose", "mddose"
    ds.StructureSetDate, ds.StructureSetTime = ds.StudyDate, ds.StudyTime
    ds.FrameOfReferenceUID = refs.frame_of_reference_uid

    def image_ref(k: int):
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT_IMAGE_STORAGE, refs.ct_sop_uids[k]
        return item

    series = Dataset()
    series.SeriesInstanceUID = refs.ct_series_uid
    series.ContourImageSequence = [image_ref(k) for k in range(len(refs.ct_sop_uids))]
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = STUDY_COMPONENT_SOP_CLASS, refs.study_uid
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = refs.frame_of_reference_uid
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    rois, contours, observations = [], [], []
    for number, (name, mask) in enumerate(_structure_masks(patient).items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, refs.frame_of_reference_uid
        roi.ROIName, roi.ROIGenerationAlgorithm = name, "AUTOMATIC"
        rois.append(roi)
        refs.roi_numbers[name] = number
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = list(_PALETTE[(number - 1) % len(_PALETTE)])
        items = []
        for k in np.nonzero(mask.any(axis=(1, 2)))[0]:
            for xy in mask_contours(mask[k]):
                idx = np.column_stack([xy, np.full(len(xy), float(k))])
                c = Dataset()
                c.ContourImageSequence = [image_ref(int(k))]
                c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", len(xy)
                c.ContourData = _contour_data(grid.index_to_world(idx))
                items.append(c)
        if items:
            rc.ContourSequence = items
        contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber, obs.ROIInterpreter = number, number, ""
        obs.RTROIInterpretedType = ("PTV" if name in patient.prescriptions else "EXTERNAL" if name == BODY
                                    else "CONTROL" if name == POSSIBLE_DOSE_ROI else "ORGAN")
        observations.append(obs)
    ds.StructureSetROISequence, ds.ROIContourSequence = rois, contours
    ds.RTROIObservationsSequence = observations
    _save(ds, path)
    return path


# ---------------------------------------------------------------------------------------- RTPLAN
def plan_targets(patient: Patient) -> dict[str, float]:
    """Target name → prescription (Gy) of the targets of ``patient.prescriptions`` that have a mask."""
    return {name: float(rx) for name, rx in patient.prescriptions.items() if name in patient.masks}


def _rtplan_dataset(patient: Patient, refs: DicomRefs):
    """A minimal RTPLAN (no beams) referencing the RTSTRUCT in ``refs`` and holding the prescriptions."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    if not refs.rtstruct_sop_uid:
        raise ValueError("write the RTSTRUCT before the RTPLAN (its SOPInstanceUID is referenced)")
    ds = _dataset(RT_PLAN_STORAGE, "RTPLAN", refs, generate_uid(), refs.rtplan_sop_uid or None)
    ds.FrameOfReferenceUID = refs.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.RTPlanLabel, ds.RTPlanName = "mddose", "mddose"
    ds.RTPlanDate, ds.RTPlanTime = ds.StudyDate, ds.StudyTime
    ds.RTPlanGeometry = "PATIENT"
    struct = Dataset()
    struct.ReferencedSOPClassUID, struct.ReferencedSOPInstanceUID = RT_STRUCT_STORAGE, refs.rtstruct_sop_uid
    ds.ReferencedStructureSetSequence = [struct]
    items = []
    for number, (name, rx) in enumerate(plan_targets(patient).items(), start=1):
        if name not in refs.roi_numbers:
            raise ValueError(f"target {name!r} is not an ROI of the written RTSTRUCT")
        item = Dataset()
        item.DoseReferenceNumber = number
        item.DoseReferenceStructureType = "VOLUME"
        item.DoseReferenceDescription = name[:64]
        item.ReferencedROINumber = refs.roi_numbers[name]
        item.DoseReferenceType = "TARGET"
        item.TargetPrescriptionDose = _ds(rx)
        items.append(item)
    if items:
        ds.PrescriptionDescription = "mddose target prescriptions"
        ds.DoseReferenceSequence = items
    return ds


def write_rtplan(patient: Patient, path: Path, refs: DicomRefs) -> Path:
    """Write the minimal RTPLAN of ``patient`` at ``path`` (after :func:`write_rtstruct` filled ``refs``).

    Sets ``refs.rtplan_sop_uid`` to the plan's SOPInstanceUID (a new one unless already set), which
    the RTDOSE then references.
    """
    ds = _rtplan_dataset(patient, refs)
    refs.rtplan_sop_uid = str(ds.SOPInstanceUID)
    _save(ds, path)
    return path


# ---------------------------------------------------------------------------------------- RTDOSE
def dose_scaling(max_dose: float) -> str:
    """DoseGridScaling (a decimal string, 7 significant digits) for a dose whose maximum is ``max_dose`` Gy."""
    if not max_dose > 0:
        return "1"
    return f"{max_dose / DOSE_MAX_PIXEL:.6e}"


def _rtdose_dataset(dose: np.ndarray, patient: Patient, refs: DicomRefs):
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag
    from pydicom.uid import generate_uid

    grid = Grid.of(patient)
    ds = _dataset(RT_DOSE_STORAGE, "RTDOSE", refs, generate_uid())
    ds.FrameOfReferenceUID = refs.frame_of_reference_uid
    _geometry(ds, grid)
    z, y, x = dose.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.Rows, ds.Columns, ds.NumberOfFrames = y, x, z
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
    ds.GridFrameOffsetVector = [_ds(k * grid.spacing[0]) for k in range(z)]
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    text = dose_scaling(float(dose.max()) if dose.size else 0.0)
    ds.DoseGridScaling = text
    scaling = float(text)  # the pixels use the scaling exactly as written
    ds.TissueHeterogeneityCorrection = "IMAGE"
    if refs.ct_sop_uids:
        images = []
        for uid in refs.ct_sop_uids:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT_IMAGE_STORAGE, uid
            images.append(item)
        ds.ReferencedImageSequence = images
    plan = Dataset()  # type 1C for DoseSummationType PLAN: the read plan's UID, else a placeholder
    plan.ReferencedSOPClassUID = RT_PLAN_STORAGE
    plan.ReferencedSOPInstanceUID = refs.rtplan_sop_uid or generate_uid()
    ds.ReferencedRTPlanSequence = [plan]
    pix = np.clip(np.rint(dose.astype(np.float64) / scaling), 0, 2**32 - 1).astype("<u4")
    ds.PixelData = pix.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _check_dose(dose: np.ndarray, patient: Patient) -> np.ndarray:
    dose = np.asarray(dose, dtype=np.float32)
    if dose.shape != patient.shape:
        raise MddoseError(f"dose shape {dose.shape} does not match patient {patient.id} grid {patient.shape}")
    if not np.all(np.isfinite(dose)):
        raise MddoseError(f"dose for patient {patient.id} contains NaN or infinite values")
    return np.maximum(dose, 0.0)


def write_rtdose(dose: np.ndarray, patient: Patient, path: str | os.PathLike, *,
                 refs: DicomRefs | None = None) -> Path:
    """Write ``dose`` (Z, Y, X) Gy on ``patient``'s grid as an RTDOSE file at ``path`` (atomically).

    The file references the patient's CT study, frame of reference and slices from
    ``patient.meta["dicom"]`` (set by :func:`mddose.data.formats.dicom.read.read_dicom_patient`); without it new UIDs are made and
    the dose references no CT. An existing file at ``path`` is replaced (callers check ``force``).
    """
    dose = _check_dose(dose, patient)
    if refs is None:
        refs = DicomRefs.from_patient(patient, new_ct=False)
        if not refs.ct_series_uid:
            log_once("dicom-rtdose-norefs", f"patient {patient.id} was not read from DICOM: its RTDOSE "
                     "gets a new study and frame of reference and references no CT")
    ds = _rtdose_dataset(dose, patient, refs)
    return atomic_save(path, lambda tmp: _save(ds, Path(tmp)))


# ---------------------------------------------------------------------------------------- patient
def write_dicom_patient(patient: Patient, directory: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``patient`` into ``directory`` as ``CT.<k>.dcm`` slices, ``RTSTRUCT.dcm``, ``RTPLAN.dcm``
    and ``RTDOSE.dcm``.

    The RTPLAN (target prescriptions; see the module docstring) is written when the patient has a dose
    or a prescribed target with a mask; the RTDOSE references it. The directory is built in a temporary
    sibling and renamed into place. An existing non-empty ``directory`` is refused unless ``force``
    (then it is replaced once the new one is complete).
    """
    directory = Path(directory)
    patient.validate_id()
    if directory.is_dir() and not any(directory.iterdir()):
        force = True  # an empty directory made by the caller
    refs = DicomRefs.from_patient(patient, new_ct=True)
    refs.rtplan_sop_uid = ""  # a new plan: the one read with the patient (if any) is not copied
    dose = _check_dose(patient.dose, patient) if patient.dose is not None else None
    with atomic_dir(directory, force=force) as tmp:
        write_ct_series(patient, tmp, refs)
        write_rtstruct(patient, tmp / "RTSTRUCT.dcm", refs)
        if dose is not None or plan_targets(patient):
            write_rtplan(patient, tmp / "RTPLAN.dcm", refs)
        if dose is not None:
            _save(_rtdose_dataset(dose, patient, refs), tmp / "RTDOSE.dcm")
    return directory
