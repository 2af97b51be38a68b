"""Per-voxel features of the tree baseline: the columns named, in their units, on the patient's own grid."""

from __future__ import annotations

import numpy as np
import pytest

from mddose.data.inputs.features import FeatureConfig, feature_volumes, patient_rows, sample_rows
from mddose.data.phantom import make_phantom
from mddose.errors import MddoseError


@pytest.fixture(scope="module")
def patient():
    return make_phantom(seed=3, size=32)


@pytest.fixture(scope="module")
def cfg():
    return FeatureConfig.for_phantoms()


@pytest.fixture(scope="module")
def vols(patient, cfg):
    return feature_volumes(patient, cfg)


def test_one_column_per_name_every_value_finite(vols, cfg, patient):
    names = cfg.channel_names
    assert vols.shape == (len(names), *patient.shape) and np.isfinite(vols).all()
    assert names[:2] == ("ct", "rx") and names[-4:] == ("dz", "dy", "dx", "r_axial")
    assert {"sdf_PTV", "sdf_targets", "beam_sum", "prior_dose", "depth"} <= set(names)
    assert [n for n in names if n.startswith("sdf_oar_")] == [f"sdf_oar_{o}" for o in cfg.oars]


def test_columns_mean_what_they_say(vols, cfg, patient):
    col = dict(zip(cfg.channel_names, vols))
    ptv = patient.masks["PTV"]
    assert (col["rx"][ptv] == patient.prescriptions["PTV"]).all() and not col["rx"][~ptv].any()
    np.testing.assert_array_equal(col["ct"], np.clip(patient.ct, *cfg.ct_clip))
    cord = patient.masks["SpinalCord"]
    assert (col["sdf_oar_SpinalCord"][cord] < 0).all() and (col["sdf_oar_SpinalCord"][~cord] > 0).all()
    assert (col["depth"] >= 0).all()
    # the offsets are from the target's centroid, in mm
    for axis, name in enumerate(("dz", "dy", "dx")):
        assert abs(float(col[name][ptv].mean())) < patient.spacing[axis] * 0.51 + 1e-6
    np.testing.assert_allclose(col["r_axial"], np.hypot(col["dy"], col["dx"]), rtol=1e-6)


def test_rows_are_the_possible_dose_voxels_in_c_order(patient, cfg, vols):
    rows, mask = patient_rows(patient, cfg)
    assert rows.shape == (int(mask.sum()), len(cfg.channel_names))
    np.testing.assert_array_equal(rows, vols[:, mask].T)


def test_samples_are_reproducible_per_seed_and_carry_the_dose(patient, cfg):
    a, ya = sample_rows(patient, cfg, seed=7)
    b, yb = sample_rows(patient, cfg, seed=7)
    c, _ = sample_rows(patient, cfg, seed=8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a, c)
    assert len(a) == min(cfg.voxels_per_patient, int(patient.dose_mask().sum()))
    rows, mask = patient_rows(patient, cfg)
    dose_by_row = {r.tobytes(): d for r, d in zip(rows, patient.dose[mask])}
    assert all(dose_by_row[r.tobytes()] == y for r, y in zip(a[:50], ya[:50]))


def test_without_priors_the_columns_are_geometry_only(patient):
    cfg = FeatureConfig.for_phantoms(priors=None)
    assert not any(n.startswith(("beam", "prior", "sdf_PTV")) for n in cfg.channel_names)
    assert feature_volumes(patient, cfg).shape[0] == len(cfg.channel_names)


def test_a_patient_without_dose_or_target_is_refused_by_name(patient, cfg):
    with pytest.raises(MddoseError, match="has no dose"):
        sample_rows(patient.with_dose(None), cfg, seed=0)
    bare = patient.with_dose(patient.dose)
    bare.masks = {k: v for k, v in patient.masks.items() if k != "PTV"}
    with pytest.raises(MddoseError, match=f"patient {patient.id}: has no target ROI"):
        feature_volumes(bare, cfg)


@pytest.mark.parametrize("d, message", [
    ({"voxels_per_patient": 0}, "voxels_per_patient must be >= 1"), ({"size": 64}, "size must be 0"),
    ({"targets": []}, "targets must name at least one ROI"), ({"ct_clip": [5, 1]}, "ct_clip must be"),
    ({"priors": {"names": ["nope"]}}, "priors"),
])
def test_bad_feature_configs_are_refused_in_one_line(d, message):
    with pytest.raises(MddoseError, match=message):
        FeatureConfig.from_dict(d)
