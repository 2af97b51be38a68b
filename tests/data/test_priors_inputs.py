"""Dose priors: flips and rotations (priors follow the images and relabel the fields), and bad input
(beam arrangements, specs, RTPLANs) giving one-line errors."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from mddose.data.patient import Patient
from mddose.data.phantom import make_phantom
from mddose.data.priors import (
    AxialTransform,
    BeamArrangement,
    DoseModel,
    PriorsSpec,
    arrangement_for,
    compute_priors,
    from_rtplan,
    transform_priors,
)
from mddose.errors import MddoseError


@pytest.fixture(scope="module")
def phantom() -> Patient:
    return make_phantom(3, 64)          # (32, 64, 64), 5 × 6 × 6 mm, a lung tumour off the grid centre


def transformed_patient(p: Patient, t: AxialTransform) -> Patient:
    return Patient(id=p.id, ct=t.apply(p.ct, pad=-1000.0), spacing=p.spacing,
                   masks={k: t.apply(v) for k, v in p.masks.items()}, possible_dose_mask=t.apply(p.possible_dose_mask),
                   prescriptions=dict(p.prescriptions))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


# ------------------------------------------------------------------------------------- transforms
def test_rotation_is_the_volume_augmentations():
    """AxialTransform rotates exactly as mddose.data.inputs.volume.rotate_axial (same voxels, same padding)."""
    from mddose.data.inputs.volume import rotate_axial

    a = np.random.default_rng(0).random((5, 21, 17)).astype(np.float32)
    for deg in (40.0, 80.0, 200.0):
        ref = rotate_axial(torch.from_numpy(a)[None], deg, 0.0)[0].numpy()
        np.testing.assert_array_equal(AxialTransform(rotate_deg=deg).apply(a), ref)


@pytest.mark.parametrize("t", [AxialTransform(flip_x=True), AxialTransform(flip_z=True),
                               AxialTransform(flip_z=True, flip_x=True)])
def test_priors_follow_flips_exactly(phantom, t):
    """Flips are exact on the grid (the isocentre and every sampling grid mirror too): the priors of the
    flipped patient are the flipped priors, each field's mask in the channel of its mirrored angle (θ → −θ)."""
    spec = PriorsSpec()
    direct = compute_priors(transformed_patient(phantom, t), spec)
    moved = transform_priors(compute_priors(phantom, spec), t, spec.arrangement)
    assert list(direct) == list(moved)
    for k in direct:
        if k.startswith("beam_") and k != "beam_sum":
            assert (direct[k] != moved[k]).mean() < 1e-3, k      # threshold ties at a few voxels at most
        else:
            np.testing.assert_allclose(direct[k], moved[k], atol=1e-3 * max(1.0, float(np.abs(moved[k]).max())),
                                       err_msg=k)


@pytest.mark.parametrize("k", [1, 4])
def test_priors_follow_rotations_by_40_degrees(phantom, k):
    """A rotation by 40°·k (the augmentation's) keeps OpenKBP's arrangement: field θ's mask moves to θ + 40°·k.

    Nearest-neighbour resampling moves mask edges by up to half a voxel (3 mm) and the isocentre by as much,
    so the tolerances are at that scale: beam masks Dice ≥ 0.85 (the phantom's apertures are ~9 voxels wide:
    one voxel more or less at an edge of a slice costs 0.05–0.1; measured 0.88–0.96), and ≥ 0.2 better than
    leaving the channels unrelabelled; SDF within 3 mm on average (measured 1.45); prior dose within 2.5 %
    of the prescription on average over the body (measured 0.56–0.59 Gy of 60: field edges carry it)."""
    spec = PriorsSpec()
    t = AxialTransform(rotate_deg=40.0 * k)
    direct = compute_priors(transformed_patient(phantom, t), spec)
    moved = transform_priors(compute_priors(phantom, spec), t, spec.arrangement)
    body = direct["prior_dose"] > 0
    naive = t.apply(compute_priors(phantom, spec)["beam_0"])
    for name in spec.arrangement.channel_names():
        assert dice(direct[name], moved[name]) >= 0.85, name
    assert dice(direct["beam_0"], naive) < dice(direct["beam_0"], moved["beam_0"]) - 0.2
    sdf = direct["sdf_targets"]
    near = np.abs(sdf) < 60
    assert np.abs(sdf - moved["sdf_targets"])[near].mean() < 3.0
    err = np.abs(direct["prior_dose"] - moved["prior_dose"])[body].mean()
    assert err < 0.025 * 60.0


def test_rotation_by_90_with_four_fields_is_exact(phantom):
    """A 90° rotation of a square grid with equal in-plane spacing is a permutation of voxels: with fields
    0/90/180/270 the priors of the rotated patient are the rotated priors."""
    spec = PriorsSpec(arrangement=BeamArrangement((0.0, 90.0, 180.0, 270.0)))
    t = AxialTransform(rotate_deg=90.0)
    direct = compute_priors(transformed_patient(phantom, t), spec)
    moved = transform_priors(compute_priors(phantom, spec), t, spec.arrangement)
    for name in ("beam_0", "beam_90", "beam_180", "beam_270"):
        assert (direct[name] != moved[name]).mean() < 1e-3
    np.testing.assert_allclose(direct["prior_dose"], moved["prior_dose"], atol=0.06)
    np.testing.assert_allclose(direct["sdf_targets"], moved["sdf_targets"], atol=1e-3)


@pytest.mark.parametrize("t, why", [(AxialTransform(flip_y=True), "0° field to 180°"),
                                    (AxialTransform(rotate_deg=90.0), "0° field to 90°")])
def test_transform_leaving_the_arrangement_is_refused(t, why):
    spec = PriorsSpec(("beams",))
    priors = {n: np.zeros((2, 4, 4), np.float32) for n in spec.arrangement.channel_names()}
    with pytest.raises(MddoseError, match=why):
        transform_priors(priors, t, spec.arrangement)


def test_angle_mapping():
    a = BeamArrangement.openkbp_default()
    assert a.transformed(flip_x=True).gantry_deg == (0.0, 320.0, 280.0, 240.0, 200.0, 160.0, 120.0, 80.0, 40.0)
    assert a.transformed(rotate_deg=40).gantry_deg == (40.0, 80.0, 120.0, 160.0, 200.0, 240.0, 280.0, 320.0, 0.0)
    assert BeamArrangement((30.0,)).transformed(flip_y=True).gantry_deg == (150.0,)


def test_2d_slices_transform_like_volumes(phantom):
    """A slice of the transformed priors is the transformed slice (flips x/y and rotations act per slice)."""
    spec = PriorsSpec(("beams", "prior_dose"))
    pr = compute_priors(phantom, spec)
    t = AxialTransform(flip_x=True, rotate_deg=40.0)
    vol = transform_priors(pr, t, spec.arrangement)
    sl = transform_priors({k: v[12] for k, v in pr.items()}, t, spec.arrangement)
    for k in vol:
        np.testing.assert_array_equal(vol[k][12], sl[k])


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("angles, msg", [((), "has no field"), ((0.0, float("nan")), "nan is not a finite number"),
                                         ((float("inf"),), "not a finite number"), (("ten",), "is not a number"),
                                         ((0.0, 360.0), "repeat a field"), ("0,40", "expected a list"),
                                         ((True,), "not a finite number")])
def test_bad_arrangement_is_one_line(angles, msg):
    with pytest.raises(MddoseError, match=msg) as exc:
        BeamArrangement(angles)
    assert "inputs.priors.beams" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("value, msg", [
    ({"names": []}, "inputs.priors.names: empty"),
    ({"names": ["sdf", "dose"]}, r"unknown prior\(s\) \['dose'\]"),
    ({"beams": []}, "has no field"),
    ({"beams": {"gantry_deg": [0], "sad_mm": -1}}, "sad_mm must be a positive"),
    ({"dose": {"margin_mm": -2}}, "dose.margin_mm must be a non-negative"),
    ({"dose": {"mu_per_mm": float("nan")}}, "dose.mu_per_mm must be a positive"),
    ({"dose": {"scatter_fraction": 1.0}}, r"scatter_fraction must be in \[0, 1\)"),
    ({"dose": {"normalise": "max"}}, "normalise must be 'mean' or 'd95'"),
    ({"dose": {"modulation_iterations": 2.5}}, "modulation_iterations must be an integer"),
    ({"dose": {"modulation_normal_weight": -1}}, "modulation_normal_weight must be a non-negative"),
    ({"dose": {"sigma": 3}}, r"unknown key\(s\) \['sigma'\]"),
    ({"extra": 1}, r"inputs.priors: unknown key\(s\) \['extra'\]"),
])
def test_bad_spec_is_one_line(value, msg):
    with pytest.raises(MddoseError, match=msg) as exc:
        PriorsSpec.from_dict(value)
    assert "\n" not in str(exc.value)


def test_patient_without_target_is_refused(phantom):
    p = Patient(id="empty", ct=phantom.ct, spacing=phantom.spacing, possible_dose_mask=phantom.possible_dose_mask,
                masks={"PTV": np.zeros(phantom.shape, bool)}, prescriptions={"PTV": 60.0})
    with pytest.raises(MddoseError, match="no target voxels"):
        compute_priors(p, PriorsSpec(("beam_sum",)))
    assert set(compute_priors(p, PriorsSpec(("sdf",)))) == {"sdf_PTV", "sdf_targets"}


def _plan(tmp_path, edit=None):
    ds = pydicom.dcmread(get_testdata_file("rtplan.dcm"), force=True)
    if edit:
        edit(ds)
    path = tmp_path / "RTPLAN.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _couch(ds):
    ds.BeamSequence[0].ControlPointSequence[0].PatientSupportAngle = 15.0


def _ffs(ds):
    ds.PatientSetupSequence[0].PatientPosition = "FFS"
    ds.BeamSequence[0].ControlPointSequence[0].GantryAngle = 90.0


def test_rtplan_beams_are_read(tmp_path):
    a = from_rtplan(_plan(tmp_path))
    assert a.gantry_deg == (0.0,) and a.sad_mm == 1000.0 and a.source.endswith("RTPLAN.dcm")
    assert from_rtplan(_plan(tmp_path, _ffs)).gantry_deg == (270.0,)   # FFS: gantry 90° enters the patient's right


@pytest.mark.parametrize("edit, msg", [
    (lambda ds: delattr(ds, "BeamSequence"), "has no treatment beam"),
    (lambda ds: setattr(ds.BeamSequence[0], "TreatmentDeliveryType", "SETUP"), "has no treatment beam"),
    (_couch, r"non-coplanar \(couch angle 15°\).*set inputs.priors.beams"),
    (lambda ds: setattr(ds, "Modality", "RTDOSE"), "not an RTPLAN"),
    (lambda ds: setattr(ds.PatientSetupSequence[0], "PatientPosition", "HFDL"), "position HFDL is not supported"),
])
def test_bad_rtplan_is_one_line(tmp_path, edit, msg):
    path = _plan(tmp_path, edit)
    with pytest.raises(MddoseError, match=msg) as exc:
        from_rtplan(path)
    assert str(exc.value).startswith(str(path)) and "\n" not in str(exc.value)


def test_unusable_rtplan_falls_back_when_not_strict(tmp_path, caplog):
    path = _plan(tmp_path, _couch)
    default = BeamArrangement.openkbp_default()
    with pytest.raises(MddoseError):
        arrangement_for(path, default)
    with caplog.at_level(logging.WARNING, logger="mddose"):
        assert arrangement_for(path, default, strict=False) is default
    assert "using the configured arrangement (0°, 40°" in caplog.text
    assert arrangement_for(None, default) is default


def test_patient_beams_must_match_the_beam_channels(phantom):
    with pytest.raises(MddoseError, match="differ from the per-field channels"):
        compute_priors(phantom, PriorsSpec(("beams",)), BeamArrangement((0.0, 180.0)))
    out = compute_priors(phantom, PriorsSpec(("beam_sum",), dose=DoseModel()), BeamArrangement((0.0, 180.0)))
    assert out["beam_sum"].max() == 2


def test_dicom_patient_records_its_rtplan_and_mddose_plans_mean_config(tmp_path):
    """The DICOM reader records the RTPLAN path; the beamless plan mddose writes counts as no plan, a plan
    with beams gives its fields."""
    from mddose.data.formats.dicom.read import read_dicom_patient
    from mddose.data.formats.dicom.write import write_dicom_patient
    from mddose.data.priors import patient_rtplan

    write_dicom_patient(make_phantom(0, 32), tmp_path / "pt")
    q = read_dicom_patient(tmp_path / "pt")
    plan = patient_rtplan(q.meta)
    assert plan is not None and plan.name == "RTPLAN.dcm"
    default = BeamArrangement.openkbp_default()
    assert arrangement_for(plan, default) is default
    assert patient_rtplan({}) is None
    ds = pydicom.dcmread(plan)
    ds.BeamSequence = pydicom.dcmread(get_testdata_file("rtplan.dcm"), force=True).BeamSequence
    ds.save_as(plan, enforce_file_format=True)
    assert arrangement_for(plan, default).gantry_deg == (0.0,)
