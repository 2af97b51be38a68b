"""DVH curves, dose-volume metrics and clinical indices against hand or NumPy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mddose.evaluate import clinical, dvh


def test_cumulative_dvh_counts(rng):
    d = rng.uniform(0, 70, 1000)
    bins = np.linspace(0, 75, 31)
    expected = np.array([(d >= b).sum() / d.size for b in bins])
    np.testing.assert_allclose(dvh.cumulative_dvh(d, bins), expected)


def test_cumulative_dvh_matches_numpy(rng):
    dose = rng.gamma(2.0, 10.0, size=(10, 12, 14)).astype(np.float32)
    mask = rng.random(dose.shape) < 0.3
    bins = np.linspace(0, float(dose.max()) * 1.1, 77)
    expected = (dose[mask][:, None] >= bins[None, :]).mean(axis=0)
    np.testing.assert_allclose(dvh.cumulative_dvh(dose[mask], bins), expected, atol=1e-12)


def test_cumulative_dvh_of_an_empty_roi_is_refused():
    """Issue 11: the two DVH functions disagreed on an empty ROI (zeros vs NaN); the one left refuses it,
    as D_x and V_d do, and the figures and dvh_curves leave empty ROIs out."""
    from mddose.evaluate import figures

    assert figures.cumulative_dvh is dvh.cumulative_dvh  # one implementation
    with pytest.raises(ValueError, match="empty ROI"):
        dvh.cumulative_dvh(np.zeros(0), np.linspace(0, 10, 5))
    with pytest.raises(ValueError, match="empty ROI"):
        dvh.volume_at_dose(np.zeros(0), 5.0)


def test_dvh_curves_per_roi(rng):
    dose = rng.uniform(0, 60, (4, 5, 6)).astype(np.float32)
    a = np.zeros(dose.shape, bool)
    a[1:3] = True
    curves = dvh.dvh_curves(dose, {"A": a, "Empty": np.zeros_like(a)}, step=1.0)
    assert set(curves) == {"A"}
    c = curves["A"]
    assert c.volume[0] == 1.0 and c.volume[-1] == 0.0
    assert np.all(np.diff(c.volume) <= 0)
    i = 30
    assert c.volume[i] == pytest.approx((dose[a] >= c.bins[i]).mean())


def test_dose_at_volume_and_volume_at_dose():
    d = np.arange(1, 101, dtype=float)  # 1..100
    assert dvh.dose_at_volume(d, 50) == pytest.approx(50.5)  # median
    assert dvh.dose_at_volume(d, 100) == 1.0 and dvh.dose_at_volume(d, 0) == 100.0
    assert dvh.volume_at_dose(d, 96) == 0.05  # 96..100
    with pytest.raises(ValueError):
        dvh.dose_at_volume(d, 120)


def test_target_metrics_by_hand():
    d = np.concatenate([np.full(90, 70.0), np.full(10, 60.0)])  # 10 % cold at 60 Gy
    m = clinical.target_metrics(d, 70.0, voxel_volume_mm3=1000.0)
    assert m["Dmean"] == 69.0 and m["Dmax"] == 70.0 and m["Dmin"] == 60.0
    assert m["V95"] == 0.9  # 0.95*70 = 66.5 Gy
    assert m["D95"] == 60.0 and m["D2"] == 70.0 and m["D0.1cc"] == 70.0


def test_homogeneity_indices_by_hand():
    d = np.linspace(60, 80, 1001)  # uniform in [60, 80]
    # D2 = 80 - 0.4 = 79.6, D98 = 60.4, D50 = 70
    assert clinical.hi_icru83(d) == pytest.approx((79.6 - 60.4) / 70)
    assert clinical.hi_maxmin(d) == pytest.approx(20 / 70)
    assert clinical.hi_icru83(np.full(10, 70.0)) == 0.0
    two = np.array([60.0, 80.0])  # σ = 10 (population), μ = 70
    assert clinical.hi_std_mean(two) == pytest.approx(10 / 70)


def test_hi_slice_error_by_hand():
    ref = np.zeros((3, 2, 2))
    ref[0] = [[1.0, 3.0], [1.0, 3.0]]  # σ/μ = 1/2
    ref[1] = 5.0  # σ/μ = 0
    pred = ref.copy()
    pred[0] = 2.0  # σ/μ = 0 → |0 − 0.5|
    pred[1] = [[0.0, 10.0], [0.0, 10.0]]  # σ/μ = 1 → |1 − 0|
    pred[2] = 7.0  # reference slice 2 is empty: skipped
    assert clinical.hi_slice_error(ref, pred) == pytest.approx((0.5 + 1.0) / 2)
    assert math.isnan(clinical.hi_slice_error(np.zeros((2, 2, 2)), pred[:2]))


def test_paddick_ci_by_hand():
    dose = np.zeros((10, 10, 10))
    target = np.zeros(dose.shape, bool)
    target[2:6, 2:6, 2:6] = True  # TV = 64
    dose[3:7, 2:6, 2:6] = 70.0  # PIV = 64, overlap 48
    assert clinical.paddick_ci(dose, target, 70.0) == pytest.approx(48 ** 2 / (64 * 64))
    dose2 = np.where(target, 70.0, 0.0)
    assert clinical.paddick_ci(dose2, target, 70.0) == 1.0
    assert math.isnan(clinical.paddick_ci(np.zeros_like(dose), target, 70.0))


def test_clinical_metrics_keys_and_sib_tv():
    dose = np.zeros((8, 8, 8))
    hi = np.zeros(dose.shape, bool)
    hi[2:4, 2:4, 2:4] = True
    lo = np.zeros(dose.shape, bool)
    lo[4:6, 2:4, 2:4] = True
    oar = np.zeros(dose.shape, bool)
    oar[6:, :, :] = True
    dose[hi] = 70.0
    dose[lo] = 56.0
    dose[oar] = 10.0
    m = clinical.clinical_metrics(dose, {"PTV70": hi, "PTV56": lo, "Cord": oar},
                                  {"PTV70": 70.0, "PTV56": 56.0}, (2.0, 2.0, 2.0))
    assert m["V95|PTV70"] == 1.0 and m["V95|PTV56"] == 1.0
    # PTV56's TV includes PTV70 (the 56 Gy isodose covers both): perfect conformity
    assert m["CI_Paddick|PTV56"] == 1.0 and m["CI_Paddick|PTV70"] == 1.0
    assert m["Dmean|Cord"] == 10.0 and "V95|Cord" not in m
    assert m["HI_ICRU83"] == 0.0 and m["HI_maxmin"] == 0.0 and m["HI_std_mean"] == 0.0
    assert clinical.primary_target({"PTV70": hi, "PTV56": lo}, {"PTV70": 70.0, "PTV56": 56.0}) == "PTV70"
    assert set(clinical.HI_DEFINITIONS) == {"HI_ICRU83", "HI_std_mean", "HI_maxmin"}
