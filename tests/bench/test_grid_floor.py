"""The resampling-floor bench: the crop geometry loses nothing, a coarse resampling does."""

from __future__ import annotations

import numpy as np
import pytest

from mddose.bench.grid_floor import crop_sizes, floor_scores, geometries, round_trip
from mddose.data.inputs.volume import VolumeConfig
from mddose.data.inputs.volume_crop import crop_box
from mddose.data.phantom import make_phantom


@pytest.fixture(scope="module")
def phantoms():
    return [make_phantom(s, 32) for s in (0, 1)]


def test_crop_floor_is_zero_and_resampling_is_not(phantoms):
    cfgs = {"coarse": VolumeConfig.for_phantoms(size=16), "crop": VolumeConfig.for_phantoms(grid="crop")}
    out = floor_scores(phantoms, cfgs)
    assert out["crop"]["max_abs_gy"] <= 60 * 2.0 ** -23 * 2           # float32 ÷ × 70 only (≤ 1 ulp of 60 Gy)
    assert out["crop"]["dose_score"] < 1e-5 and out["crop"]["dvh_score"] < 1e-5
    assert out["coarse"]["dose_score"] > 0.05 and set(out["coarse"]["patients"]) == {"phantom_0", "phantom_1"}
    exact = round_trip(phantoms[0], VolumeConfig.for_phantoms(grid="crop", reference_dose=64.0))
    m = phantoms[0].dose_mask()
    np.testing.assert_array_equal(exact[m], phantoms[0].dose[m])   # a power-of-two reference: bit for bit


def test_geometries_and_crop_sizes(phantoms):
    assert list(geometries([64, 96], 8)) == ["resample-64", "resample-96", "crop-m8"]
    out = crop_sizes(phantoms, 2, 9)
    shapes = [[s.stop - s.start for s in crop_box(p.dose_mask(), 2)] for p in phantoms]
    assert list(out["shapes"].values()) == shapes
    assert out["dataset_bytes"] == 21 * sum(int(np.prod(s)) for s in shapes)
