"""ε-, v- and x0-prediction; Min-SNR-γ loss weights; pixel-weighted loss; L1 loss.

The oracle networks are the analytic optimal denoiser of a Gaussian target (see test_samplers.py) written in
each parameterisation: the samplers must turn all three into the same x̂0, so their samples agree. The loss
weights are checked against a NumPy computation of Hang et al.'s formulas, and against the identity that makes
them one weighting: λ_t · MSE(target) = min(SNR_t, γ) · MSE(x0) for every parameterisation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mddose.diffusion import LOSS_WEIGHTINGS, PREDICTIONS, GaussianDiffusion, sample
from mddose.errors import MddoseError

MU, S = 0.3, 0.15   # the Gaussian target in model space


class Oracle(torch.nn.Module):
    """The optimal denoiser of x0 ~ N(MU, S²) as an ε-, v- or x0-predictor: model(x_t (B,1,H,W), t (B,), cond)."""

    def __init__(self, d: GaussianDiffusion):
        super().__init__()
        self.ab, self.prediction = d.alphas_cumprod, d.prediction

    def forward(self, x, t, cond):
        ab = self.ab[t].float().view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * MU) * (1 - ab).sqrt() / (ab * S ** 2 + 1 - ab)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        if self.prediction == "v":
            return ab.sqrt() * eps - (1 - ab).sqrt() * x0
        if self.prediction == "x0":
            return x0
        return eps


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("sampler,steps", [("ddim", 50), ("dpmpp2m", 10), ("ddpm", 100)])
def test_every_parameterisation_samples_like_eps_prediction(prediction, sampler, steps):
    d_eps, d = GaussianDiffusion(), GaussianDiffusion(prediction=prediction)
    cond = torch.zeros(1, 2, 32, 32)
    a, _ = sample(Oracle(d_eps), d_eps, cond, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(3))
    b, _ = sample(Oracle(d), d, cond, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert abs(b.mean().item() - (MU + 1) / 2) < 0.01          # and it is the target, not a shared mistake


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_split_output_of_the_target_gives_x0_and_noise_back(prediction):
    d = GaussianDiffusion(prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    x_t = d.q_sample(x0, t, noise)
    x0_hat, eps_hat = d.split_output(x_t, t, d.target(x0, t, noise))
    torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eps_hat, noise, rtol=1e-3, atol=1e-3)


def test_x0_target_is_the_clean_sample_in_model_space():
    d = GaussianDiffusion(prediction="x0")
    x0, noise = torch.rand(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([1, 400, 999])
    assert torch.equal(d.target(x0, t, noise), x0)
    oracle = lambda xt, tt, c: GaussianDiffusion.to_model(x0)  # noqa: E731  (loss takes data units)
    assert d.loss(oracle, x0, torch.zeros(3, 1, 4, 4), t=t, noise=noise).item() == 0.0
    assert d.loss(lambda xt, tt, c: xt, x0, torch.zeros(3, 1, 4, 4), t=t, noise=noise).item() > 0.01


# ---------------------------------------------------------------------------- Min-SNR-γ
def _hand_weights(prediction: str, gamma: float, t: np.ndarray) -> np.ndarray:
    """Hang et al. (2023) with the linear schedule, computed in NumPy from the betas."""
    ab = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[t]
    snr = ab / (1.0 - ab)
    clamped = np.minimum(snr, gamma)
    return {"eps": clamped / snr, "v": clamped / (snr + 1.0), "x0": clamped}[prediction]


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("gamma", [1.0, 5.0, 20.0])
def test_min_snr_weights_match_a_hand_computation(prediction, gamma):
    t = np.array([0, 1, 50, 200, 400, 700, 999])
    d = GaussianDiffusion(prediction=prediction, loss_weighting="min_snr", min_snr_gamma=gamma)
    w = d.loss_weights(torch.from_numpy(t))
    assert w.dtype == torch.float64 and w.shape == (len(t),)
    np.testing.assert_allclose(w.numpy(), _hand_weights(prediction, gamma, t), rtol=1e-10)
    if prediction == "eps":    # clamped at low noise (SNR > γ), 1 at high noise
        assert w[0] < 0.01 and w[-1] == 1.0


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_uniform_weights_are_ones(prediction):
    assert torch.equal(GaussianDiffusion(prediction=prediction).loss_weights(torch.arange(0, 1000, 37)),
                       torch.ones(28, dtype=torch.float64))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_is_one_weighting_on_x0_for_every_parameterisation(prediction):
    """λ_t · ‖out − target‖² = min(SNR_t, γ) · ‖x̂0(out) − x0‖² per item, whatever the network outputs."""
    g = torch.Generator().manual_seed(1)
    d = GaussianDiffusion(prediction=prediction, loss_weighting="min_snr", min_snr_gamma=5.0)
    x0 = torch.rand(5, 1, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(5, 1, 6, 6, generator=g, dtype=torch.float64)
    out = torch.randn(5, 1, 6, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([3, 100, 300, 600, 990])
    x_t = d.q_sample(x0, t, noise)
    lhs = d.loss_weights(t) * ((out - d.target(x0, t, noise)) ** 2).mean(dim=(1, 2, 3))
    rhs = d.snr(t).clamp(max=5.0) * ((d.split_output(x_t, t, out)[0] - x0) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(lhs, rhs, rtol=1e-8, atol=0)


def _net(xt, tt, cond):
    """A fixed, timestep-dependent 'network'."""
    return 0.3 * xt + cond[:, :1] * (tt.view(-1, 1, 1, 1).float() / 1000)


def test_min_snr_with_infinite_gamma_equals_the_uniform_loss_for_eps():
    g = torch.Generator().manual_seed(2)
    x0, cond = torch.rand(4, 1, 8, 8, generator=g), torch.randn(4, 2, 8, 8, generator=g)
    t, noise = torch.tensor([0, 5, 500, 999]), torch.randn(4, 1, 8, 8, generator=g)
    uniform = GaussianDiffusion().loss(_net, x0, cond, t=t, noise=noise)
    inf = GaussianDiffusion(loss_weighting="min_snr", min_snr_gamma=math.inf)
    assert torch.equal(inf.loss_weights(t), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(inf.loss(_net, x0, cond, t=t, noise=noise), uniform, rtol=1e-6, atol=0)
    five = GaussianDiffusion(loss_weighting="min_snr").loss(_net, x0, cond, t=t, noise=noise)
    assert five.item() < 0.9 * uniform.item()        # γ = 5 does down-weight the low-noise steps


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_loss_is_the_weighted_mean(prediction):
    g = torch.Generator().manual_seed(3)
    x0, cond = torch.rand(4, 1, 8, 8, generator=g), torch.randn(4, 2, 8, 8, generator=g)
    t, noise = torch.tensor([0, 5, 500, 999]), torch.randn(4, 1, 8, 8, generator=g)
    d = GaussianDiffusion(prediction=prediction, loss_weighting="min_snr", min_snr_gamma=2.0)
    xm = d.to_model(x0)
    per_item = ((_net(d.q_sample(xm, t, noise), t, cond) - d.target(xm, t, noise)) ** 2).mean(dim=(1, 2, 3))
    expect = (torch.from_numpy(_hand_weights(prediction, 2.0, t.numpy())).float() * per_item).mean()
    torch.testing.assert_close(d.loss(_net, x0, cond, t=t, noise=noise), expect, rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------- pixel weights
def _batch(seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(3, 1, 8, 8, generator=g)
    mask = torch.zeros(3, 1, 8, 8)
    mask[:, :, 2:6, 1:7] = 1.0
    return x0, mask, torch.tensor([2, 300, 900]), torch.randn(3, 1, 8, 8, generator=g)


def test_zero_weight_outside_the_mask_ignores_errors_there():
    d = GaussianDiffusion(prediction="x0")
    x0, mask, t, noise = _batch()
    exact_inside = lambda xt, tt, c: torch.where(mask > 0, d.to_model(x0), 5.0)  # noqa: E731
    cond = torch.zeros(3, 1, 8, 8)
    assert d.loss(exact_inside, x0, cond, t=t, noise=noise, weight=mask).item() == 0.0
    assert d.loss(exact_inside, x0, cond, t=t, noise=noise).item() > 1.0          # unweighted: the errors count
    wrong_inside = lambda xt, tt, c: torch.where(mask > 0, 5.0, d.to_model(x0))  # noqa: E731
    assert d.loss(wrong_inside, x0, cond, t=t, noise=noise, weight=mask).item() > 1.0


@pytest.mark.parametrize("weighting", LOSS_WEIGHTINGS)
def test_pixel_weighted_loss_is_normalised_by_the_weight_sum(weighting):
    d = GaussianDiffusion(loss_weighting=weighting)
    x0, mask, t, noise = _batch(5)
    cond = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    w = torch.where(mask > 0, 1.0, 0.25)
    xm = d.to_model(x0)
    err = (_net(d.q_sample(xm, t, noise), t, cond) - d.target(xm, t, noise)) ** 2
    lam = d.loss_weights(t).float().view(-1, 1, 1, 1)
    expect = (lam * w * err).sum() / w.sum()
    torch.testing.assert_close(d.loss(_net, x0, cond, t=t, noise=noise, weight=w), expect, rtol=1e-5, atol=0)
    ones = d.loss(_net, x0, cond, t=t, noise=noise, weight=torch.ones(3, 1, 8, 8))
    torch.testing.assert_close(ones, d.loss(_net, x0, cond, t=t, noise=noise), rtol=1e-6, atol=0)
    zero = d.loss(_net, x0, cond, t=t, noise=noise, weight=torch.zeros(3, 1, 8, 8))
    assert zero.item() == 0.0


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_l1_loss_is_the_mean_absolute_error_of_the_target(prediction):
    d = GaussianDiffusion(prediction=prediction, loss_type="l1")
    x0, mask, t, noise = _batch(7)
    cond = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(8))
    xm = d.to_model(x0)
    err = (_net(d.q_sample(xm, t, noise), t, cond) - d.target(xm, t, noise)).abs()
    torch.testing.assert_close(d.loss(_net, x0, cond, t=t, noise=noise), err.mean(), rtol=1e-6, atol=0)
    w = torch.where(mask > 0, 1.0, 0.1)
    torch.testing.assert_close(d.loss(_net, x0, cond, t=t, noise=noise, weight=w), (w * err).sum() / w.sum(),
                               rtol=1e-5, atol=0)
    mse = GaussianDiffusion(prediction=prediction).loss(_net, x0, cond, t=t, noise=noise)
    torch.testing.assert_close(mse, (err ** 2).mean(), rtol=1e-5, atol=0)   # same error, other norm


def test_l1_gradient_is_the_sign_of_the_error():
    """∂L1/∂out = sign(out − target) / N: each pixel pulls toward the median, whatever the error's size."""
    d = GaussianDiffusion(prediction="x0", loss_type="l1")
    x0, _, t, noise = _batch(9)
    out = torch.zeros(3, 1, 8, 8, requires_grad=True)
    d.loss(lambda xt, tt, c: out, x0, torch.zeros(3, 1, 8, 8), t=t, noise=noise).backward()
    torch.testing.assert_close(out.grad, torch.sign(out.detach() - d.to_model(x0)) / out.numel())


def test_weight_of_the_wrong_shape_is_refused():
    x0, _, t, noise = _batch()
    with pytest.raises(MddoseError, match=r"weight of shape \(3, 1, 4, 4\) does not fit the dose \(3, 1, 8, 8\)"):
        GaussianDiffusion().loss(_net, x0, torch.zeros(3, 1, 8, 8), t=t, noise=noise, weight=torch.ones(3, 1, 4, 4))


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs,match", [({"prediction": "sample"}, "prediction must be one of eps, v, x0"),
                                          ({"loss_weighting": "snr"}, "loss_weighting must be one of uniform, min_snr"),
                                          ({"min_snr_gamma": 0}, "min_snr_gamma must be > 0"),
                                          ({"min_snr_gamma": True}, "min_snr_gamma must be a number"),
                                          ({"min_snr_gamma": float("nan")}, "min_snr_gamma must be a number"),
                                          ({"loss_type": "huber"}, "loss_type must be one of mse, l1"),
                                          ({"loss_type": "l1", "loss_weighting": "min_snr"},
                                           "'l1' takes loss_weighting 'uniform' only")])
def test_bad_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(MddoseError, match=match) as e:
        GaussianDiffusion(**kwargs)
    assert "\n" not in str(e.value)


def test_to_dict_keeps_the_default_entry_and_round_trips_the_new_settings():
    assert GaussianDiffusion().to_dict() == {"num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                                             "schedule": "linear", "prediction": "eps"}
    d = GaussianDiffusion(prediction="x0", loss_weighting="min_snr", min_snr_gamma=3.0)
    back = GaussianDiffusion.from_dict(d.to_dict())
    assert (back.prediction, back.loss_weighting, back.min_snr_gamma) == ("x0", "min_snr", 3.0)
    l1 = GaussianDiffusion(prediction="x0", loss_type="l1").to_dict()
    assert l1["loss_type"] == "l1" and GaussianDiffusion.from_dict(l1).loss_type == "l1"
    assert "loss_type" not in GaussianDiffusion(prediction="x0").to_dict()   # default: the entry as before
    with pytest.raises(MddoseError, match="ckpt: diffusion.loss_weighting must be"):
        GaussianDiffusion.from_dict({"loss_weighting": "p2"}, "ckpt")
