"""Samplers on a Gaussian target with the analytic ε-predictor.

For data x0 ~ N(mu, s²) (model space, voxel-wise i.i.d.) the optimal ε-predictor is
ε*(x_t, t) = (x_t - sqrt(ab) mu) · sqrt(1-ab) / (ab s² + 1 - ab); an exact sampler then
returns samples with mean mu and std s. Tolerances: mean within 0.01 (≈ 8 standard errors of
the 4096-voxel mean for s = 0.15), std within 6 % (discretisation error of few-step solvers
plus sampling error) — a wrong coefficient anywhere moves either by far more.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import mddose.diffusion.samplers as samplers_module
from mddose.diffusion import SAMPLERS, Denoiser, GaussianDiffusion, sample, timesteps
from mddose.errors import MddoseError

MU, S = 0.3, 0.15   # model space → data units: mean (MU+1)/2, std S/2


class Analytic(torch.nn.Module):
    def __init__(self, d: GaussianDiffusion, mu: float = MU, s: float = S):
        super().__init__()
        self.ab, self.mu, self.s = d.alphas_cumprod, mu, s
        self.calls = 0

    def forward(self, x, t, cond):
        self.calls += 1
        ab = self.ab[t].float().view(-1, 1, 1, 1)
        return (x - ab.sqrt() * self.mu) * (1 - ab).sqrt() / (ab * self.s ** 2 + 1 - ab)


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", 1000, 0.0), ("ddpm", 250, 0.0), ("ddim", 100, 0.0),
                                               ("ddim", 250, 1.0), ("dpmpp2m", 10, 0.0), ("dpmpp2m", 25, 0.0)])
def test_gaussian_target(sampler, steps, eta):
    d = GaussianDiffusion()
    model = Analytic(d)
    cond = torch.zeros(1, 2, 64, 64)
    mean, std = sample(model, d, cond, sampler=sampler, steps=steps, eta=eta,
                       generator=torch.Generator().manual_seed(0))
    assert model.calls == steps
    assert mean.shape == (1, 1, 64, 64) and torch.all(std == 0)
    assert abs(mean.mean().item() - (MU + 1) / 2) < 0.01
    assert abs(mean.std().item() / (S / 2) - 1) < 0.06


@pytest.mark.parametrize("sampler,steps", [("ddim", 100), ("dpmpp2m", 20)])
def test_samples_k_gives_uncertainty_map(sampler, steps):
    d = GaussianDiffusion()
    cond = torch.zeros(3, 2, 16, 16)
    mean, std = sample(Analytic(d), d, cond, sampler=sampler, steps=steps, samples=16,
                       generator=torch.Generator().manual_seed(1))
    assert mean.shape == std.shape == (3, 1, 16, 16)
    assert torch.all(std > 0)
    # voxel-wise std over 16 samples estimates S/2; averaged variance over 768 voxels is tight
    assert abs((std ** 2).mean().sqrt().item() / (S / 2) - 1) < 0.08
    # the mean of 16 samples is closer to the target mean than single samples are
    assert (mean - (MU + 1) / 2).abs().mean() < 0.5 * S / 2


def test_ddpm_equals_ddim_eta1():
    d = GaussianDiffusion()
    cond = torch.zeros(2, 1, 8, 8)
    a, _ = sample(Analytic(d), d, cond, "ddpm", steps=40, generator=torch.Generator().manual_seed(5))
    b, _ = sample(Analytic(d), d, cond, "ddim", steps=40, eta=1.0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_output_clipped_to_data_range():
    d = GaussianDiffusion()
    far = Analytic(d, mu=3.0, s=0.1)     # target outside [-1, 1] in model space
    mean, _ = sample(far, d, torch.zeros(1, 1, 8, 8), "dpmpp2m", steps=10, generator=torch.Generator().manual_seed(0))
    assert mean.max() <= 1.0 and mean.min() >= 0.0 and mean.mean() > 0.99


def test_generator_reproducible():
    d = GaussianDiffusion()
    cond = torch.zeros(1, 1, 8, 8)
    a = sample(Analytic(d), d, cond, "ddim", steps=10, eta=0.5, generator=torch.Generator().manual_seed(2))
    b = sample(Analytic(d), d, cond, "ddim", steps=10, eta=0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0])


@pytest.mark.parametrize("spacing", ["logsnr", "linear"])
@pytest.mark.parametrize("T,steps", [(1000, 50), (1000, 1000), (1000, 999), (1000, 3), (1000, 1), (10, 7)])
def test_timesteps_distinct_decreasing(T, steps, spacing):
    ts = timesteps(GaussianDiffusion(T), steps, spacing)
    assert len(ts) == steps and ts[0] == T - 1 and all(a > b for a, b in zip(ts, ts[1:]))
    assert ts[-1] == (0 if steps > 1 else T - 1)


@pytest.mark.parametrize("kwargs", [{"sampler": "euler"}, {"steps": 0}, {"steps": 1001}, {"samples": 0},
                                    {"spacing": "karras"}, {"eta": -1.0}])
def test_bad_arguments(kwargs):
    d = GaussianDiffusion()
    with pytest.raises(MddoseError):
        sample(Analytic(d), d, torch.zeros(1, 1, 4, 4), **kwargs)


class AnalyticV(Analytic):
    """The same optimal denoiser expressed as a v-predictor: v = sqrt(ab) ε − sqrt(1−ab) x̂0."""

    def forward(self, x, t, cond):
        eps = super().forward(x, t, cond)
        ab = self.ab[t].float().view(-1, 1, 1, 1)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0


@pytest.mark.parametrize("sampler,steps", [("ddim", 50), ("dpmpp2m", 10), ("ddpm", 100)])
def test_v_prediction_samples_like_eps_prediction(sampler, steps):
    d_eps, d_v = GaussianDiffusion(), GaussianDiffusion(prediction="v")
    cond = torch.zeros(1, 2, 32, 32)
    a, _ = sample(Analytic(d_eps), d_eps, cond, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(3))
    b, _ = sample(AnalyticV(d_v), d_v, cond, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_v_prediction_loss_target():
    d = GaussianDiffusion(prediction="v")
    x0, noise = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    ab = d.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(d.target(x0, t, noise), ab.sqrt() * noise - (1 - ab).sqrt() * x0)
    x_t = d.q_sample(x0, t, noise)
    x0_hat, eps_hat = d.split_output(x_t, t, d.target(x0, t, noise))
    torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eps_hat, noise, rtol=1e-4, atol=1e-4)
    with pytest.raises(MddoseError, match="prediction"):
        GaussianDiffusion(prediction="x1")


# ---------------------------------------------------------------------------- the sampler table
#: outputs of the samplers before they became a table (commit bb79062), seed 11, cond (1, 1, 4, 4), K = 2:
#: the first three voxels of the mean and the sum of the std map (data units)
GOLDEN = [(("ddpm", 7, 0.0, "eps"), [0.6375598, 0.620396, 0.6664621], 0.361158),
          (("ddim", 6, 0.5, "eps"), [0.6461979, 0.6634361, 0.6098058], 0.479751),
          (("ddim", 5, 0.0, "v"), [0.6442647, 0.705845, 0.6070722], 0.461135),
          (("dpmpp2m", 5, 0.0, "eps"), [0.6418425, 0.7294297, 0.5889428], 0.655883),
          (("dpmpp2m", 4, 0.0, "v"), [0.6429942, 0.7182163, 0.5975635], 0.563281)]
U32 = 2.0 ** -24   # float32 unit roundoff
#: rounding of the recorded numbers (7 significant digits for the mean, 6 decimals for the std sum)
RECORDED = (5e-8, 5e-7)


def golden_tolerance(d: GaussianDiffusion, ts: list[int], x_max: float) -> float:
    """Bound (data units) on what float32 rounding can move a voxel of the mean, on any machine.

    At step t the denoiser's x̂0 comes out of a cancellation divided by sqrt(ᾱ_t): x̂0 = (x − sqrt(1−ᾱ_t) ε̂) /
    sqrt(ᾱ_t) for ε-prediction, and the same inside AnalyticV and split_output for v. Its ≤ 4 float32 roundings
    of quantities ≤ |x| ≤ 1 + max|x_T| (the state stays within the noise plus the signal) are ≤ U32·|x| each,
    whichever instruction set rounds them, so x̂0 is off by ≤ 4·U32·|x| / sqrt(ᾱ_t) (630·U32·|x| at t = T−1).
    The step weighs x̂0 by ≤ sqrt(ᾱ_next) (DDIM, DDPM's c0 and, with ε̂ recomputed from x̂0, their ε̂ term) or
    ≤ 2·sqrt(ᾱ_next) (DPM-Solver++'s extrapolation 1 + 1/(2r), r ≈ 1 on the log-SNR grid); later steps do not
    amplify a state error (state weights ≤ 1, the analytic denoiser's x̂0 moves with x by ≤ 1) and data units
    halve it: Σ_steps 4·U32·(1 + max|x_T|)·sqrt(ᾱ_next / ᾱ_t) (ᾱ = 1 after the last step). The elementwise rest
    (O(1) values rounded ~10 times a step) is an order below and the noise's own rounding is damped (perturbed
    by 2 ulps it moved the outputs by ≤ 2e-7). The bound is 1.7e-5 – 3.1e-5 here; an AMD EPYC (AVX2) was
    3.4e-6 off, torch's scalar kernels ≤ 1.2e-7; a 1 % change of η moves the mean by 6e-4 (test below).
    """
    ab = [float(d.alphas_cumprod[t]) for t in ts] + [1.0]
    return sum(4 * U32 * (1 + x_max) * math.sqrt(ab[k + 1] / ab[k]) for k in range(len(ts)))


def _golden_run(case, eta_scale: float = 1.0):
    sampler, steps, eta, pred = case
    d = GaussianDiffusion(prediction=pred)
    model = (AnalyticV if pred == "v" else Analytic)(d)
    mean, std = sample(model, d, torch.zeros(1, 1, 4, 4), sampler, steps=steps, eta=eta * eta_scale, samples=2,
                       generator=torch.Generator().manual_seed(11))
    x_max = float(torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(11)).abs().max())
    return mean, std, golden_tolerance(d, timesteps(d, steps), x_max)


@pytest.mark.parametrize("case,first,std_sum", GOLDEN)
def test_outputs_unchanged_since_before_the_table(case, first, std_sum):
    mean, std, tol = _golden_run(case)
    assert tol < 4e-5                                   # the bound stays far below a real change (see below)
    torch.testing.assert_close(mean.flatten()[:3].double(), torch.tensor(first, dtype=torch.float64),
                               rtol=0, atol=tol + RECORDED[0])
    # std = |a − b| / sqrt(2) per voxel of the K = 2 samples, a and b each within tol: ≤ sqrt(2)·tol, 16 voxels
    assert abs(float(std.double().sum()) - std_sum) <= 16 * math.sqrt(2) * tol + RECORDED[1]


@pytest.mark.parametrize("case", [GOLDEN[1][0]])
def test_golden_tolerance_sees_a_changed_coefficient(case, monkeypatch):
    """What the tolerance can see: DDIM's η 1 % off, or DPM-Solver++'s step coefficient expm1(−h) 0.1 % off."""
    mean, _, tol = _golden_run(case)
    off, _, _ = _golden_run(case, eta_scale=1.01)
    assert float((off - mean).abs().max()) > 10 * tol
    d = GaussianDiffusion()
    a, _ = sample(Analytic(d), d, torch.zeros(1, 1, 4, 4), "dpmpp2m", steps=5,
                  generator=torch.Generator().manual_seed(11))
    real_expm1 = math.expm1
    monkeypatch.setattr(samplers_module.math, "expm1", lambda h: real_expm1(h) * (1 + 1e-3))
    b, _ = sample(Analytic(d), d, torch.zeros(1, 1, 4, 4), "dpmpp2m", steps=5,
                  generator=torch.Generator().manual_seed(11))
    assert float((a - b).abs().max()) > 10 * golden_tolerance(d, timesteps(d, 5), 3.0)   # x_max ≤ 3 here


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_has_the_one_signature(name):
    fn = SAMPLERS[name]
    assert fn is getattr(samplers_module, f"sample_{name}")
    params = inspect.signature(fn).parameters
    assert list(params)[:3] == ["model_fn", "x", "ts"]
    assert all(params[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in ("model_fn", "x", "ts"))
    assert params["generator"].kind is params["callback"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["generator"].default is None and params["callback"].default is None


@pytest.mark.parametrize("name,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.8), ("dpmpp2m", 0.0)])
def test_sampler_function_called_directly_equals_sample(name, eta):
    """A table function run on a Denoiser gives what ``sample`` gives, and reports every step to the callback."""
    d = GaussianDiffusion()
    cond = torch.zeros(2, 1, 8, 8)
    ts = timesteps(d, 6)
    mean, _ = sample(Analytic(d), d, cond, name, steps=6, eta=eta, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    x = torch.randn((2, 1, 8, 8), generator=g)
    seen = []
    opts = {"eta": eta} if name == "ddim" else {}
    out = SAMPLERS[name](Denoiser(Analytic(d), d, cond), x, ts, generator=g, callback=seen.append, **opts)
    assert torch.equal(d.to_data(out.clamp(-1, 1)), mean)
    assert [s["i"] for s in seen] == list(range(6)) and [s["t"] for s in seen] == ts
    assert all(s["x"].shape == s["x0"].shape == (2, 1, 8, 8) for s in seen)
    assert torch.equal(seen[-1]["x"], out) and seen[-1]["x0"].abs().max() <= 1


def test_sample_passes_the_callback_and_progress_does_not_change_results():
    d = GaussianDiffusion()
    cond = torch.zeros(1, 1, 8, 8)
    seen = []
    a = sample(Analytic(d), d, cond, "dpmpp2m", steps=5, generator=torch.Generator().manual_seed(0),
               callback=lambda info: seen.append(info["t"]))
    b = sample(Analytic(d), d, cond, "dpmpp2m", steps=5, generator=torch.Generator().manual_seed(0), progress=True)
    assert seen == timesteps(d, 5) and torch.equal(a[0], b[0])


def test_a_new_sampler_is_one_function(monkeypatch):
    """Registering a function in SAMPLERS is all it takes: here x̂0-only (DDIM η = 0 written another way)."""

    def sample_x0_ddim(model_fn, x, ts, *, generator=None, callback=None):
        for i, t in enumerate(ts):
            x0, eps = model_fn(x, t)
            ab_next = model_fn.alpha_bar(ts[i + 1]) if i + 1 < len(ts) else 1.0
            x = ab_next ** 0.5 * x0 + (1 - ab_next) ** 0.5 * eps
        return x

    monkeypatch.setitem(SAMPLERS, "x0-ddim", sample_x0_ddim)
    d = GaussianDiffusion()
    cond = torch.zeros(1, 2, 16, 16)
    a, _ = sample(Analytic(d), d, cond, "x0-ddim", steps=8, eta=0.3, generator=torch.Generator().manual_seed(6))
    b, _ = sample(Analytic(d), d, cond, "ddim", steps=8, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
