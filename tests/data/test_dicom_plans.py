"""DICOM-RT ROI names and prescriptions: name mapping, RTPLAN read and written (split from test_dicom.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from mddose.data.formats.dicom.read import read_dicom_patient
from mddose.data.formats.dicom.rtplan import plan_prescriptions
from mddose.data.formats.dicom.write import write_dicom_patient
from mddose.data.patient import Patient
from mddose.data.roi_names import map_roi_name, prescription_from_name
from tests.data.test_dicom import ORIGIN, SHAPE, SPACING, make_patient


# ---------------------------------------------------------------------------------------- names, plans
@pytest.mark.parametrize("dicom_name, expected", [
    ("PTV70", "PTV70"), ("ptv_63", "PTV63"), ("PTV 56", "PTV56"), ("Brain_Stem", "Brainstem"),
    ("Cord", "SpinalCord"), ("spinal cord", "SpinalCord"), ("Parotid_R", "RightParotid"),
    ("PAROTID L", "LeftParotid"), ("Oesophagus", "Esophagus"), ("Lung_L", "LungL"), ("Lung_R", "LungR"),
    ("Lungs", "Lungs"), ("HEART", "Heart"), ("External", "Body"), ("Mandible", "Mandible"),
    ("Larynx", "Larynx"), ("Bladder ", "Bladder"),
])
def test_map_roi_name(dicom_name, expected):
    assert map_roi_name(dicom_name) == expected


def test_map_roi_name_user_table():
    table = {"GTV-primary": "GTV", "Couch": None, "heart": "Cor"}
    assert map_roi_name("gtv_PRIMARY", table) == "GTV"
    assert map_roi_name("COUCH", table) is None
    assert map_roi_name("Heart", table) == "Cor"
    assert map_roi_name("Lung_L", table) == "LungL"


@pytest.mark.parametrize("name, rx", [("PTV70", 70.0), ("PTV56.5", 56.5), ("PTV7000", 70.0), ("PTV", None),
                                      ("CTV70", None), ("SpinalCord", None)])
def test_prescription_from_name(name, rx):
    assert prescription_from_name(name) == rx


def test_rtplan_prescription_overrides_name(roundtrip, tmp_path):
    p, d, q = roundtrip
    out = tmp_path / "pt"
    shutil.copytree(d, out)
    numbers = {int(r.ROINumber): r.ROIName for r in pydicom.dcmread(out / "RTSTRUCT.dcm").StructureSetROISequence}
    plan = pydicom.dcmread(get_testdata_file("rtplan.dcm"), force=True)
    ref = plan.DoseReferenceSequence[1]
    ref.DoseReferenceStructureType, ref.TargetPrescriptionDose = "VOLUME", 66.0
    ref.ReferencedROINumber = next(n for n, name in numbers.items() if name == "PTV70")
    assert plan_prescriptions(plan, numbers) == {"PTV70": 66.0}
    plan.FrameOfReferenceUID = q.meta["dicom"]["frame_of_reference_uid"]
    plan.save_as(out / "RTPLAN.dcm", enforce_file_format=True)
    assert read_dicom_patient(out).prescriptions == {"PTV70": 66.0}


# ---------------------------------------------------------------------------------------- RTPLAN written
def openkbp_named_patient() -> Patient:
    """The synthetic patient with three nested targets PTV70 ⊃ ... named as in OpenKBP (70/63/56 Gy)."""
    p = make_patient()
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING)), indexing="ij")
    r2 = (z - z.mean()) ** 2 + (y - y.mean() + 5) ** 2 + (x - x.mean() - 4) ** 2
    masks = {**p.masks, "PTV63": (r2 > 10 ** 2) & (r2 <= 13 ** 2), "PTV56": (r2 > 13 ** 2) & (r2 <= 16 ** 2)}
    masks["PTV63"] &= p.masks["Body"]
    masks["PTV56"] &= p.masks["Body"]
    return Patient("okbp", p.ct, SPACING, masks, p.dose, p.possible_dose_mask, ORIGIN, np.eye(3),
                   {"PTV70": 70.0, "PTV63": 63.0, "PTV56": 56.0})


@pytest.fixture(scope="module")
def phantom_roundtrip(tmp_path_factory):
    """(phantom, directory written, phantom read back) — the target ``PTV`` carries no dose in its name."""
    from mddose.data.phantom import make_phantom

    p = make_phantom(0, 64)
    d = tmp_path_factory.mktemp("phantom") / "pt"
    write_dicom_patient(p, d)
    return p, d, read_dicom_patient(d)


def test_phantom_roundtrip_keeps_prescriptions(phantom_roundtrip):
    from mddose.data.inputs.slices import SliceConfig, patient_to_slices

    p, d, q = phantom_roundtrip
    assert p.prescriptions == {"PTV": 60.0} and prescription_from_name("PTV") is None
    assert (d / "RTPLAN.dcm").is_file()
    assert q.prescriptions == {"PTV": 60.0} and q.targets == ["PTV"]
    assert np.array_equal(q.masks["PTV"], p.masks["PTV"])
    cfg = SliceConfig.for_phantoms()
    got, ref = patient_to_slices(q, cfg), patient_to_slices(p, cfg)
    assert got.cond.shape == ref.cond.shape and got.cond.shape[0] > 0
    np.testing.assert_array_equal(got.z, ref.z)
    np.testing.assert_allclose(got.dose, ref.dose, atol=1e-4)


def test_rewritten_patient_keeps_prescriptions(phantom_roundtrip, tmp_path):
    _, d, q = phantom_roundtrip
    old_plan = q.meta["dicom"]["rtplan_sop_instance_uid"]
    assert old_plan == pydicom.dcmread(d / "RTPLAN.dcm").SOPInstanceUID
    write_dicom_patient(q, tmp_path / "again")
    r = read_dicom_patient(tmp_path / "again")
    assert r.prescriptions == {"PTV": 60.0}
    new_plan = pydicom.dcmread(tmp_path / "again" / "RTPLAN.dcm")
    assert new_plan.SOPInstanceUID != old_plan and new_plan.StudyInstanceUID == q.meta["dicom"]["study_instance_uid"]
    dose = pydicom.dcmread(tmp_path / "again" / "RTDOSE.dcm")
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == new_plan.SOPInstanceUID


def test_openkbp_named_targets_keep_prescriptions(tmp_path):
    p = openkbp_named_patient()
    write_dicom_patient(p, tmp_path / "pt")
    q = read_dicom_patient(tmp_path / "pt")
    assert q.prescriptions == {"PTV70": 70.0, "PTV63": 63.0, "PTV56": 56.0}
    assert all(np.array_equal(q.masks[t], p.masks[t]) for t in p.prescriptions)


def test_rtplan_dose_reference_sequence(tmp_path):
    p = openkbp_named_patient()
    write_dicom_patient(p, tmp_path / "pt")
    plan = pydicom.dcmread(tmp_path / "pt" / "RTPLAN.dcm")
    rs = pydicom.dcmread(tmp_path / "pt" / "RTSTRUCT.dcm")
    ct0 = pydicom.dcmread(tmp_path / "pt" / "CT.0000.dcm")
    assert plan.SOPClassUID == plan.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.481.5"
    assert plan.Modality == "RTPLAN" and plan.RTPlanGeometry == "PATIENT" and plan.RTPlanLabel
    assert plan.StudyInstanceUID == ct0.StudyInstanceUID and plan.FrameOfReferenceUID == ct0.FrameOfReferenceUID
    assert plan.SeriesInstanceUID not in {ct0.SeriesInstanceUID, rs.SeriesInstanceUID}
    (struct,) = plan.ReferencedStructureSetSequence
    assert struct.ReferencedSOPClassUID == rs.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert struct.ReferencedSOPInstanceUID == rs.SOPInstanceUID
    names = {int(r.ROINumber): str(r.ROIName) for r in rs.StructureSetROISequence}
    refs = plan.DoseReferenceSequence
    assert sorted(int(r.DoseReferenceNumber) for r in refs) == list(range(1, len(p.prescriptions) + 1))
    assert {r.DoseReferenceStructureType for r in refs} == {"VOLUME"}
    assert {r.DoseReferenceType for r in refs} == {"TARGET"}
    assert {names[int(r.ReferencedROINumber)]: float(r.TargetPrescriptionDose) for r in refs} == p.prescriptions
    assert plan_prescriptions(plan, names) == p.prescriptions


def test_rtdose_references_written_plan(roundtrip):
    _, d, _ = roundtrip
    plan = pydicom.dcmread(d / "RTPLAN.dcm")
    (ref,) = pydicom.dcmread(d / "RTDOSE.dcm").ReferencedRTPlanSequence
    assert ref.ReferencedSOPClassUID == plan.SOPClassUID
    assert ref.ReferencedSOPInstanceUID == plan.SOPInstanceUID


def test_no_plan_without_dose_or_prescriptions(tmp_path):
    p = make_patient(dose=False)
    bare = Patient("bare", p.ct, SPACING, p.masks, None, p.possible_dose_mask, ORIGIN, np.eye(3), {})
    write_dicom_patient(bare, tmp_path / "pt")
    assert not (tmp_path / "pt" / "RTPLAN.dcm").exists()
    assert read_dicom_patient(tmp_path / "pt").prescriptions == {"PTV70": 70.0}  # from the name
