"""GaussianDiffusion: schedule constants, forward-process statistics, loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mddose.diffusion import GaussianDiffusion
from mddose.errors import MddoseError


@pytest.mark.parametrize("T,b0,b1", [(1000, 1e-4, 0.02), (50, 1e-3, 0.05)])
def test_linear_schedule_matches_numpy(T, b0, b1):
    d = GaussianDiffusion(num_timesteps=T, beta_start=b0, beta_end=b1)
    betas = b0 + (b1 - b0) * np.arange(T) / (T - 1)
    ab = np.cumprod(1.0 - betas)
    np.testing.assert_allclose(d.betas.numpy(), betas, rtol=1e-12)
    np.testing.assert_allclose(d.alphas_cumprod.numpy(), ab, rtol=1e-12)
    np.testing.assert_allclose(d.sqrt_one_minus_alphas_cumprod.numpy() ** 2 + d.alphas_cumprod.numpy(), 1.0)
    assert d.alphas_cumprod.dtype == torch.float64


def test_cosine_schedule_monotone_and_bounded():
    ab = GaussianDiffusion(200, schedule="cosine").alphas_cumprod
    assert torch.all(ab[1:] < ab[:-1]) and 0 < float(ab[-1]) < 1e-3 and float(ab[0]) > 0.99


@pytest.mark.parametrize("kwargs", [{"schedule": "quadratic"}, {"beta_start": 0.1, "beta_end": 0.01},
                                    {"num_timesteps": 0}])
def test_bad_schedule_raises(kwargs):
    with pytest.raises(MddoseError):
        GaussianDiffusion(**kwargs)


@pytest.mark.parametrize("t", [0, 250, 999])
def test_q_sample_statistics(t):
    d = GaussianDiffusion()
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((4, 1, 128, 128), 0.5)
    noise = torch.randn(x0.shape, generator=g)
    xt = d.q_sample(x0, torch.full((4,), t), noise)
    ab = float(d.alphas_cumprod[t])
    assert abs(xt.mean().item() - 0.5 * ab ** 0.5) < 0.01
    assert abs(xt.std().item() - (1 - ab) ** 0.5) < 0.02 * (1 - ab) ** 0.5 + 1e-4


def test_data_model_mapping_roundtrip():
    x0 = torch.rand(2, 1, 8, 8)
    xm = GaussianDiffusion.to_model(x0)
    assert xm.min() >= -1 and xm.max() <= 1
    torch.testing.assert_close(GaussianDiffusion.to_data(xm), x0)
    torch.testing.assert_close(GaussianDiffusion.to_model(torch.tensor([0.0, 1.0])), torch.tensor([-1.0, 1.0]))


def test_loss_is_zero_for_oracle_and_positive_otherwise():
    d = GaussianDiffusion()
    x0 = torch.rand(3, 1, 8, 8)
    noise = torch.randn(x0.shape)
    t = torch.tensor([0, 10, 900])
    oracle = lambda xt, tt, c: noise  # noqa: E731
    assert d.loss(oracle, x0, torch.zeros(3, 2, 8, 8), t=t, noise=noise).item() == 0.0
    zero = lambda xt, tt, c: torch.zeros_like(xt)  # noqa: E731
    loss = d.loss(zero, x0, torch.zeros(3, 2, 8, 8), generator=torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and 0.5 < loss.item() < 1.5


def test_loss_generator_reproducible():
    d = GaussianDiffusion()
    x0 = torch.rand(2, 1, 8, 8)
    f = lambda xt, tt, c: xt * tt.view(-1, 1, 1, 1) / 1000  # noqa: E731
    a = d.loss(f, x0, x0, generator=torch.Generator().manual_seed(3))
    b = d.loss(f, x0, x0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("d,match", [({"num_timesteps": 10, "betas": 1}, r"unknown key\(s\) diffusion\.betas"),
                                     ([], "must be a JSON object"), ({"prediction": "x1"}, "prediction must be"),
                                     ({"beta_start": "a"}, "beta_start must be a number")])
def test_from_dict_refuses_bad_configs_in_one_line(d, match):
    with pytest.raises(MddoseError, match=match) as e:
        GaussianDiffusion.from_dict(d, "ckpt/config.json")
    assert str(e.value).startswith("ckpt/config.json: ")
    assert GaussianDiffusion.from_dict(GaussianDiffusion(prediction="v").to_dict()).prediction == "v"
