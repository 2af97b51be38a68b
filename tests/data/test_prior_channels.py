"""Dose priors as input channels (``inputs.priors``): the same channels in the 2D slices and the 3D volumes,
channel permutations that follow the augmentations, configs that refuse augmentations leaving the arrangement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mddose.data.inputs.prior_channels import SDF_SCALE_MM, patient_priors
from mddose.data.inputs.slices import ROT90_DEG, SliceConfig, patient_to_slices
from mddose.data.inputs.volume import VolumeConfig, native_volume, patient_to_volume, rotate_axial
from mddose.data.patient import Patient
from mddose.data.phantom import make_phantom
from mddose.data.priors import AxialTransform, BeamArrangement, PriorsSpec, compute_priors, transform_priors
from mddose.errors import MddoseError

ALL = {"names": ["sdf", "beams", "beam_sum", "prior_dose"]}
FOUR = {"names": ["beams", "prior_dose"], "beams": [0.0, 90.0, 180.0, 270.0]}


@pytest.fixture(scope="module")
def phantom() -> Patient:
    return make_phantom(3, 64)          # (32, 64, 64), a lung tumour off the grid centre, target "PTV"


def test_channel_names_follow_the_spec():
    s = SliceConfig.for_phantoms(priors=ALL)
    v = VolumeConfig.for_phantoms(priors=ALL)
    prior = ("sdf_PTV", "sdf_targets", *(f"beam_{40 * k}" for k in range(9)), "beam_sum", "prior_dose")
    assert s.prior_names == v.prior_names == prior
    assert s.channel_names == (*SliceConfig.for_phantoms().channel_names, *prior)
    assert v.channels == VolumeConfig.for_phantoms().channels + len(prior)
    assert s.pad_values[-len(prior):] == (1.0, 1.0, *(0.0,) * 11)
    assert SliceConfig.for_phantoms().prior_names == ()


def test_config_round_trip_and_unchanged_keys_without_priors():
    s = SliceConfig.for_phantoms(priors=ALL)
    assert SliceConfig.from_dict(s.to_dict()) == s
    assert isinstance(s.to_dict()["priors"], dict)
    assert "priors" not in SliceConfig().build_key()          # caches of configs without priors keep their keys
    v = VolumeConfig(priors={"names": ["prior_dose"]})
    assert VolumeConfig.from_dict(v.to_dict()) == v
    assert VolumeConfig().to_dict()["priors"] is None


def test_priors_are_identical_in_2d_and_3d(phantom):
    """The 2D slices (native size, no crop) and the 3D volume carry the same prior channels, bit for bit."""
    s = SliceConfig.for_phantoms(size=64, slice_selection="all", priors=ALL)
    v = VolumeConfig.for_phantoms(size=64, priors=ALL, reference_dose=s.reference_dose)
    sl = patient_to_slices(phantom, s)
    vol = native_volume(phantom, v)
    k = len(s.prior_names)
    np.testing.assert_array_equal(sl.cond[:, -k:], vol.cond[-k:].transpose(1, 0, 2, 3))
    assert np.isfinite(vol.cond).all()
    # and they are the priors: tanh(sdf / 30 mm), masks, beam sum / fields, dose / reference
    raw = compute_priors(phantom, PriorsSpec.from_dict(ALL))
    np.testing.assert_allclose(vol.cond[-k], np.tanh(raw["sdf_PTV"] / SDF_SCALE_MM), atol=1e-6)
    np.testing.assert_array_equal(vol.cond[-k + 2], raw["beam_0"])
    np.testing.assert_allclose(vol.cond[-2], raw["beam_sum"] / 9, rtol=1e-6)
    np.testing.assert_allclose(vol.cond[-1], raw["prior_dose"] / s.reference_dose, rtol=1e-6)


def test_resampled_volume_and_cropped_slices_carry_priors(phantom):
    v = patient_to_volume(phantom, VolumeConfig.for_phantoms(size=32, priors=ALL))
    s = patient_to_slices(phantom, SliceConfig.for_phantoms(size=48, crop="dose_box", priors=ALL))
    assert np.isfinite(v.cond).all() and np.isfinite(s.cond).all()
    assert v.cond[-1].max() > 0.5 and s.cond[:, -1].max() > 0.5        # the prior dose, in reference units


def _as_priors(cond: np.ndarray, names) -> dict:
    return {n: cond[i] for i, n in enumerate(names)}


@pytest.mark.parametrize("deg", [40.0, 120.0, 320.0])
def test_volume_rotation_permutation_is_transform_priors(phantom, deg):
    """Rotating every channel (as ``augment_volume``) then applying ``prior_permutation`` gives exactly the priors
    that :func:`transform_priors` (tested against recomputation on rotated patients) gives."""
    cfg = VolumeConfig.for_phantoms(priors=ALL)
    k = len(cfg.prior_names)
    pri = native_volume(phantom, cfg).cond[-k:]
    rotated = rotate_axial(torch.from_numpy(np.ascontiguousarray(pri)), deg, torch.tensor(cfg.pad_values[-k:]))
    perm = cfg.prior_permutation(rotate_deg=deg)[-k:]
    got = rotated[torch.as_tensor(perm) - (cfg.channels - k)].numpy()
    want = transform_priors(_as_priors(pri, cfg.prior_names), AxialTransform(rotate_deg=deg),
                            cfg.priors.arrangement)
    for i, n in enumerate(cfg.prior_names):
        if n.startswith("beam_") and n != "beam_sum":
            np.testing.assert_array_equal(got[i], want[n], err_msg=n)


def test_mirror_permutation_swaps_mirrored_fields():
    cfg = VolumeConfig.for_phantoms(priors={"names": ["beams"]})
    names = cfg.channel_names
    perm = cfg.mirror_permutation
    assert names[perm[names.index("beam_40")]] == "beam_320"
    assert names[perm[names.index("beam_0")]] == "beam_0"
    assert sorted(perm) == list(range(cfg.channels))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_slice_rot90_is_the_documented_gantry_rotation(phantom, k):
    """``torch.rot90(·, k)`` of the slice augmentation is the axial rotation by ROT90_DEG[k − 1] of the volume
    code, so that with fields 0/90/180/270 the relabelled beams of a rotated slice are those of the rotated
    patient."""
    a = np.random.default_rng(k).random((3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(torch.rot90(torch.from_numpy(a), k, (-2, -1)).numpy(),
                                  AxialTransform(rotate_deg=ROT90_DEG[k - 1]).apply(a))
    cfg = SliceConfig.for_phantoms(size=64, slice_selection="all", rot90=True, priors=FOUR)
    t = AxialTransform(rotate_deg=ROT90_DEG[k - 1])
    rotated = Patient(id="r", ct=t.apply(phantom.ct, pad=-1000.0), spacing=phantom.spacing,
                      masks={n: t.apply(m) for n, m in phantom.masks.items()},
                      possible_dose_mask=t.apply(phantom.possible_dose_mask), prescriptions=dict(phantom.prescriptions))
    nb = len(cfg.base_channel_names)
    z = 16
    ours = torch.from_numpy(patient_to_slices(phantom, cfg).cond[z])
    moved = torch.rot90(ours, k, (-2, -1))[torch.as_tensor(cfg.prior_permutation(rotate_deg=ROT90_DEG[k - 1]))]
    direct = patient_to_slices(rotated, cfg).cond[z]
    for i, n in enumerate(cfg.prior_names[:4]):
        assert (moved[nb + i].numpy() != direct[nb + i]).mean() < 1e-3, n


@pytest.mark.parametrize("make, msg", [
    (lambda: SliceConfig.for_phantoms(flip_y=True, priors=ALL), "slice config: flip_y would move the beams"),
    (lambda: SliceConfig.for_phantoms(rot90=True, priors=ALL), "slice config: a rotation by -90° would move"),
    (lambda: VolumeConfig.for_phantoms(priors={"names": ["beams"], "beams": [0, 50, 100]}),
     "volume config: flip_x would move the beams"),
    (lambda: VolumeConfig.for_phantoms(flip=False, priors={"names": ["beams"], "beams": [0, 180]}),
     "volume config: a rotation by 40° would move"),
    (lambda: SliceConfig(priors=["sdf"]), "slice config: priors must be a JSON object"),
    (lambda: VolumeConfig(priors={"names": ["dose"]}), "unknown prior"),
])
def test_augmentations_leaving_the_arrangement_are_refused(make, msg):
    with pytest.raises(MddoseError, match=msg) as e:
        make()
    assert "\n" not in str(e.value)


def test_scalar_priors_allow_every_augmentation():
    SliceConfig.for_phantoms(flip_y=True, rot90=True, priors={"names": ["sdf", "beam_sum", "prior_dose"]})
    VolumeConfig.for_phantoms(priors={"names": ["prior_dose"], "beams": [0, 50, 100]})


def test_patient_without_target_is_refused_by_name(phantom):
    p = Patient(id="empty", ct=phantom.ct, spacing=phantom.spacing,
                masks={k: v for k, v in phantom.masks.items() if k != "PTV"}, prescriptions={"PTV": 60.0})
    with pytest.raises(MddoseError, match="patient empty: no target voxels"):
        patient_priors(p, PriorsSpec.from_dict(ALL), ("PTV",), 70.0)
