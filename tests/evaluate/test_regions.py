"""The error by distance to the targets puts each voxel's error in its band."""

from __future__ import annotations

import numpy as np
import pytest

from mddose.errors import MddoseError
from mddose.evaluate.regions import error_by_distance


def _case():
    shape = (10, 40, 40)
    targets = np.zeros(shape, bool)
    targets[3:7, 15:25, 15:25] = True
    mask = np.ones(shape, bool)
    mask[:, :, :2] = False
    return shape, targets, mask


def test_each_band_gets_its_own_bias_and_the_shares_add_up():
    from mddose.data.priors.distance import signed_distance

    shape, targets, mask = _case()
    spacing = (3.0, 2.0, 2.0)
    sd = signed_distance(targets, spacing)
    ref = np.full(shape, 40.0, np.float32)
    pred = ref + np.select([sd <= 0, sd <= 10, sd <= 30], [2.0, -1.0, 0.5], -3.0).astype(np.float32)
    bands = error_by_distance(ref, pred, targets, mask, spacing)
    assert [b.name for b in bands] == ["inside", "0-10 mm", "10-30 mm", ">30 mm"]
    np.testing.assert_allclose([b.bias for b in bands], [2.0, -1.0, 0.5, -3.0], atol=1e-5)
    np.testing.assert_allclose([b.mae for b in bands], [2.0, 1.0, 0.5, 3.0], atol=1e-5)
    assert sum(b.fraction for b in bands) == pytest.approx(1.0)
    assert bands[0].fraction == pytest.approx(targets[mask].sum() / mask.sum())


def test_an_empty_band_is_nan_and_bad_input_is_one_line():
    shape, targets, mask = _case()
    ref = np.zeros(shape, np.float32)
    bands = error_by_distance(ref, ref, targets, mask, (1.0, 1.0, 1.0), edges_mm=(0.0, 1000.0))
    assert np.isnan(bands[-1].mae) and bands[-1].fraction == 0.0
    with pytest.raises(MddoseError, match="must each have a voxel"):
        error_by_distance(ref, ref, np.zeros(shape, bool), mask, (1.0, 1.0, 1.0))
    with pytest.raises(MddoseError, match="shapes differ"):
        error_by_distance(ref, ref[:-1], targets, mask, (1.0, 1.0, 1.0))
    with pytest.raises(MddoseError, match="must increase"):
        error_by_distance(ref, ref, targets, mask, (1.0, 1.0, 1.0), edges_mm=(10.0, 0.0))
