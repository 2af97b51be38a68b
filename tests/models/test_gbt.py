"""The tree ensemble held as tensors predicts exactly what scikit-learn's fitted ensemble predicts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mddose.errors import MddoseError
from mddose.models import build_model, make_config

sklearn_ensemble = pytest.importorskip("sklearn.ensemble")


def _fit(loss: str, n: int = 4000, features: int = 5, seed: int = 0, **kw):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    x[:, 1] = np.round(x[:, 1] * 2) / 2               # many ties: rows on the thresholds themselves
    y = (2 * x[:, 0] + np.sin(3 * x[:, 1]) + (x[:, 2] > 0.3) + 0.1 * rng.normal(size=n)).astype(np.float32)
    est = sklearn_ensemble.HistGradientBoostingRegressor(loss=loss, max_iter=25, max_leaf_nodes=15,
                                                         min_samples_leaf=5, random_state=seed, **kw).fit(x, y)
    return est, x


def _ensemble(est, features: int, loss: str):
    from mddose.kinds.tree import ensemble_arrays

    sizes, state = ensemble_arrays(est)
    cfg = dataclasses.replace(make_config("gbt", "tiny", in_channels=features, loss=loss), **sizes)
    model = build_model(cfg)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return model


@pytest.mark.parametrize("loss", ["absolute_error", "squared_error"])
def test_the_exported_ensemble_predicts_what_sklearn_predicts(loss):
    est, x = _fit(loss)
    model = _ensemble(est, x.shape[1], loss)
    rng = np.random.default_rng(1)
    new = rng.normal(size=(3000, x.shape[1])).astype(np.float32)
    for rows in (x, new):                     # training rows (on the bins' edges) and new ones
        ours = model.predict_rows(torch.from_numpy(rows)).numpy()
        np.testing.assert_allclose(ours, est.predict(rows), rtol=0, atol=1e-5)
    assert model.config.trees == 25 and model.config.depth >= 1


def test_thresholds_round_down_so_float32_rows_split_as_in_float64():
    from mddose.kinds.tree import _threshold_f32

    t = np.array([0.1, 1.0, -0.3, 1e-8, 2.5000000001], dtype=np.float64)
    t32 = _threshold_f32(t)
    assert (t32.astype(np.float64) <= t).all()
    above = np.nextafter(t32, np.float32(np.inf))
    assert (above.astype(np.float64) > t).all()    # the largest float32 not above t


def test_forward_is_predict_rows_voxel_by_voxel():
    est, x = _fit("absolute_error", features=3)
    model = _ensemble(est, 3, "absolute_error")
    cond = torch.randn(2, 3, 4, 5, 6)
    out = model(cond)
    assert out.shape == (2, 1, 4, 5, 6)
    rows = cond.movedim(1, -1).reshape(-1, 3)
    torch.testing.assert_close(out.reshape(-1), model.predict_rows(rows))


def test_an_unfitted_ensemble_predicts_zero_and_wrong_rows_are_refused():
    model = build_model("gbt", "tiny", in_channels=4)
    assert not model.predict_rows(torch.randn(7, 4)).any()
    with pytest.raises(MddoseError, match="expected rows of 4 features, got \\(7, 3\\)"):
        model.predict_rows(torch.randn(7, 3))


@pytest.mark.parametrize("override, message", [
    ({"loss": "huber"}, "loss must be one of absolute_error, squared_error"),
    ({"max_bins": 256}, "max_bins must be < 256"), ({"learning_rate": 0}, "learning_rate must be > 0"),
    ({"trees": 2}, "trees 2 and nodes 0 do not describe an ensemble"),
])
def test_bad_hyperparameters_are_refused_in_one_line(override, message):
    with pytest.raises(MddoseError, match=message):
        make_config("gbt", "tiny", **override)
