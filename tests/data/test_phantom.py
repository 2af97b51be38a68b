"""Synthetic thoracic phantoms: determinism, anatomy/HU plausibility, dose model, writing."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mddose.data.patient import Patient
from mddose.data.phantom import (N_BEAMS, PHANTOM_OARS, PHANTOM_PRESCRIPTION, hu_to_red,
                                 make_phantom, write_phantoms)
from mddose.errors import MddoseError

SEEDS = list(range(8))


@pytest.fixture(scope="module")
def phantoms() -> dict[int, Patient]:
    return {s: make_phantom(s, 64) for s in SEEDS}


def test_same_seed_gives_identical_arrays():
    a, b = make_phantom(3, 64), make_phantom(3, 64)
    np.testing.assert_array_equal(a.ct, b.ct)
    np.testing.assert_array_equal(a.dose, b.dose)
    assert a.masks.keys() == b.masks.keys()
    for name in a.masks:
        np.testing.assert_array_equal(a.masks[name], b.masks[name])


def test_different_seeds_differ(phantoms):
    a, b = phantoms[0], phantoms[1]
    assert not np.array_equal(a.ct, b.ct)
    assert not np.array_equal(a.masks["PTV"], b.masks["PTV"])
    assert not np.array_equal(a.dose, b.dose)


def test_contract(phantoms):
    p = phantoms[0]
    assert p.shape == (32, 64, 64)
    assert p.spacing == pytest.approx((5.0, 6.0, 6.0))
    assert set(p.masks) == {"PTV", *PHANTOM_OARS}
    assert p.prescriptions == {"PTV": PHANTOM_PRESCRIPTION}
    assert p.targets == ["PTV"]
    np.testing.assert_array_equal(p.possible_dose_mask, p.masks["Body"])
    # voxel [0,0,0] and the grid centre: the grid is centred on the LPS origin
    centre = p.affine() @ np.array([(p.shape[2] - 1) / 2, (p.shape[1] - 1) / 2, (p.shape[0] - 1) / 2, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)


@pytest.mark.parametrize("size,shape", [(32, (16, 32, 32)), (128, (64, 128, 128))])
def test_sizes(size, shape):
    t0 = time.perf_counter()
    p = make_phantom(5, size)
    elapsed = time.perf_counter() - t0
    assert p.shape == shape
    assert p.masks["PTV"].any() and p.masks["SpinalCord"].any()
    assert np.percentile(p.dose[p.masks["PTV"]], 5) == pytest.approx(PHANTOM_PRESCRIPTION, rel=5e-3)
    assert elapsed < (5.0 if size == 128 else 1.0)


@pytest.mark.parametrize("size", [0, 16, 64.5, "x", True])
def test_bad_size(size):
    with pytest.raises(MddoseError):
        make_phantom(0, size)


@pytest.mark.parametrize("seed", SEEDS)
def test_hounsfield_units_per_tissue(phantoms, seed):
    p = phantoms[seed]
    ct, m = p.ct, p.masks
    lungs = (m["LungL"] | m["LungR"]) & ~m["PTV"]
    assert -900 < np.median(ct[lungs]) < -700
    assert np.median(ct[~m["Body"]]) == pytest.approx(-1000, abs=30)
    assert 0 < np.median(ct[m["Heart"] & ~m["PTV"]]) < 80
    assert 0 < np.median(ct[m["SpinalCord"]]) < 250    # soft tissue, partial volume with the bony canal
    soft = m["Body"] & ~lungs & ~m["Heart"]
    assert np.percentile(ct[soft], 99.5) > 400          # bone (vertebrae, ribs, sternum)
    assert -200 < np.median(ct[soft]) < 100
    assert ct.min() >= -1000 and ct.max() < 3000
    # the cord lies inside bone: the ring around it is dense
    assert hu_to_red(np.array([700.0]))[0] > 1.2 and hu_to_red(np.array([-1000.0]))[0] == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_dose_model(phantoms, seed):
    p = phantoms[seed]
    d, m = p.dose, p.masks
    rx = PHANTOM_PRESCRIPTION
    assert np.percentile(d[m["PTV"]], 5) == pytest.approx(rx, rel=5e-3)
    assert d[m["PTV"]].mean() > rx
    assert d.max() < 1.35 * rx                               # no absurd hot spots
    assert d[m["SpinalCord"]].mean() < 0.3 * rx
    assert d[m["SpinalCord"]].max() < 0.75 * rx
    assert d[m["Heart"]].mean() < 0.5 * rx
    assert d[~m["Body"]].max() < 1e-3 * rx
    assert d[m["Body"] & ~m["PTV"]].mean() < 0.35 * rx
    # dose follows anatomy: falls off with distance from the PTV
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(~m["PTV"], sampling=p.spacing)
    near = m["Body"] & (dist > 0) & (dist <= 10)
    far = m["Body"] & (dist > 50)
    assert d[near].mean() > 2 * d[far].mean()


def test_plan_is_a_function_of_the_anatomy(phantoms):
    """Every plan uses the same fixed equispaced beams (nothing random a model cannot see); their weights
    follow the anatomy: beams that would hit the OARs carry less dose."""
    fixed = [i * 360.0 / N_BEAMS for i in range(N_BEAMS)]
    weights = []
    for p in phantoms.values():
        assert p.meta["beams_deg"] == pytest.approx(fixed)
        assert sum(p.meta["beam_weights"]) == pytest.approx(1.0)
        weights.append(p.meta["beam_weights"])
    weights = np.asarray(weights)
    assert (weights.max(axis=1) > 1.5 * weights.min(axis=1)).all()    # not uniform: sparing beams favoured
    assert weights.std(axis=0).max() > 0.02                             # and different per anatomy


def test_ptv_varies_across_seeds(phantoms):
    centres = np.array([np.argwhere(phantoms[s].masks["PTV"]).mean(axis=0) * phantoms[s].spacing
                        for s in SEEDS])
    volumes = np.array([phantoms[s].roi_volume_cc("PTV") for s in SEEDS])
    sites = {phantoms[s].meta["tumour"]["site"] for s in SEEDS}
    assert centres[:, 2].std() > 15.0       # left/right position (mm)
    assert centres[:, 0].std() > 5.0        # superior/inferior position (mm)
    assert volumes.max() / volumes.min() > 1.5
    assert len(sites) >= 2


@pytest.mark.parametrize("fmt", ["nifti", "openkbp"])
def test_write_phantoms_round_trip(tmp_path, fmt):
    from mddose.data.io import load_patient

    paths = write_phantoms(2, tmp_path / "out", seed=7, size=32, format=fmt)
    assert [p.name for p in paths] == ["pt_1", "pt_2"]
    ref = make_phantom(8, 32)
    got = load_patient(paths[1], cache=False)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.dose, ref.dose, atol=1e-2)
    np.testing.assert_allclose(got.ct, ref.ct, atol=1.0)
    for name in ref.masks:
        np.testing.assert_array_equal(got.masks[name], ref.masks[name])
    with pytest.raises(MddoseError):
        write_phantoms(1, tmp_path / "out", seed=7, size=32, format=fmt)
    write_phantoms(1, tmp_path / "out", seed=9, size=32, format=fmt, force=True)


def test_write_phantoms_bad_n(tmp_path):
    with pytest.raises(MddoseError):
        write_phantoms(0, tmp_path)
