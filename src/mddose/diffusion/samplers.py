"""Samplers for :class:`~mddose.diffusion.schedule.GaussianDiffusion`, behind one function :func:`sample`.

* ``"ddpm"`` — ancestral sampling (Ho et al. 2020) with the posterior variance β̃. ``steps=T``
  (1000 for the paper) is the exact original sampler; fewer steps use the *respaced* chain of
  Nichol & Dhariwal (2021) on the same ᾱ values (equal to DDIM with η = 1).
* ``"ddim"`` — Song et al. (2021), any number of steps, stochasticity ``eta`` (0 = deterministic).
* ``"dpmpp2m"`` — DPM-Solver++(2M) (Lu et al. 2022), data-prediction multistep, second order with a
  first-order first and last step; deterministic (``eta`` ignored). Good in 10–25 steps.

All samplers evaluate the network at ``steps`` distinct timesteps from ``T-1`` (pure noise) to ``0``,
by default evenly spaced in log-SNR λ = log(α/σ) (``spacing="logsnr"``; ``"linear"`` = evenly in t),
and finish at ᾱ = 1 with the last x̂0. Measured on the analytic Gaussian target (tests) the spread
error of DDIM-50 is -6 % with log-SNR spacing vs -16 % with linear spacing, and DPM-Solver++(2M)
is within 1 % at 10–25 steps vs up to +19 % (its 2nd-order extrapolation misbehaves with the very
unequal λ steps of a linear grid); ending at t = 0 rather than t = T/steps - 1 avoids a final jump
that shrinks narrow targets by ~8 %.
x̂0 is clipped to [-1, 1] (model space) at every step and ε is recomputed from the clipped x̂0.
Everything is computed in float32 except the schedule constants (float64 on the host).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from mddose.diffusion.schedule import GaussianDiffusion
from mddose.errors import MddoseError

SAMPLERS = ("ddpm", "ddim", "dpmpp2m")


def timesteps(diffusion: GaussianDiffusion, steps: int, spacing: str = "logsnr") -> list[int]:
    """The ``steps`` distinct evaluation timesteps, decreasing from ``T-1`` to ``0`` (``[T-1]`` for one step).

    ``spacing="logsnr"``: uniform in λ = log(α/σ) (rounded, then made strictly decreasing);
    ``"linear"``: ``round(linspace(T-1, 0, steps))``. ``steps = T`` gives every timestep either way.
    """
    T = diffusion.num_timesteps
    if not 1 <= int(steps) <= T:
        raise MddoseError(f"sampler steps must be in 1..{T}, got {steps}")
    steps = int(steps)
    if spacing == "linear":
        ts = np.round(np.linspace(T - 1, 0, steps)).astype(np.int64)
    elif spacing == "logsnr":
        ab = diffusion.alphas_cumprod.numpy()
        lam = 0.5 * np.log(ab / (1 - ab))                       # decreasing in t
        target = np.linspace(lam[T - 1], lam[0], steps)
        ts = np.round(np.interp(target, lam[::-1], np.arange(T)[::-1])).astype(np.int64)
        for i in range(steps - 2, -1, -1):                     # strictly decreasing, ending at 0
            ts[i] = max(ts[i], ts[i + 1] + 1)
        ts = np.minimum(ts, T - 1 - np.arange(steps))           # and starting at most at T-1
    else:
        raise MddoseError(f"unknown timestep spacing {spacing!r}; choose logsnr or linear")
    return [int(t) for t in ts]


def _randn(shape, generator: torch.Generator | None, device) -> Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev, dtype=torch.float32).to(device)


class _Eval:
    """Wraps the model: ε, clipped x̂0 and the consistent ε at one timestep."""

    def __init__(self, model, diffusion: GaussianDiffusion, cond: Tensor):
        self.model, self.diffusion, self.cond = model, diffusion, cond

    def __call__(self, x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        ab = float(self.diffusion.alphas_cumprod[t])
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = self.model(x, tt, self.cond).float()
        x0 = self.diffusion.split_output(x, tt, out)[0].clamp(-1.0, 1.0)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        return x0, eps


def _ab_prev(diffusion: GaussianDiffusion, ts: list[int], i: int) -> float:
    return float(diffusion.alphas_cumprod[ts[i + 1]]) if i + 1 < len(ts) else 1.0


def _ddim(f: _Eval, x: Tensor, ts: list[int], eta: float, generator, it) -> Tensor:
    d = f.diffusion
    for i in it:
        t = ts[i]
        ab, ab_prev = float(d.alphas_cumprod[t]), _ab_prev(d, ts, i)
        x0, eps = f(x, t)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _randn(x.shape, generator, x.device)
    return x


def _ddpm(f: _Eval, x: Tensor, ts: list[int], generator, it) -> Tensor:
    d = f.diffusion
    for i in it:
        t = ts[i]
        ab, ab_prev = float(d.alphas_cumprod[t]), _ab_prev(d, ts, i)
        beta = 1 - ab / ab_prev                      # β of the (respaced) step
        x0, _ = f(x, t)
        c0 = math.sqrt(ab_prev) * beta / (1 - ab)
        ct = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
        var = (1 - ab_prev) / (1 - ab) * beta          # posterior variance β̃
        x = c0 * x0 + ct * x
        if var > 0:
            x = x + math.sqrt(var) * _randn(x.shape, generator, x.device)
    return x


def _dpmpp2m(f: _Eval, x: Tensor, ts: list[int], it) -> Tensor:
    d = f.diffusion
    x0_prev, h_prev = None, None
    for i in it:
        t = ts[i]
        ab, ab_next = float(d.alphas_cumprod[t]), _ab_prev(d, ts, i)
        a_s, s_s = math.sqrt(ab), math.sqrt(1 - ab)
        a_t, s_t = math.sqrt(ab_next), math.sqrt(1 - ab_next)
        x0, _ = f(x, t)
        if s_t == 0.0:                       # last step to the clean data: x = x̂0 (first order)
            x = x0
            break
        lam_s, lam_t = math.log(a_s / s_s), math.log(a_t / s_t)
        h = lam_t - lam_s
        if x0_prev is None:
            D = x0
        else:
            r = h_prev / h
            D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (s_t / s_s) * x - a_t * math.expm1(-h) * D
        x0_prev, h_prev = x0, h
    return x


@torch.no_grad()
def sample(model: torch.nn.Module | Callable, diffusion: GaussianDiffusion, cond: Tensor, sampler: str = "ddim",
           steps: int = 50, eta: float = 0.0, samples: int = 1, generator: torch.Generator | None = None,
           progress: bool = False, spacing: str = "logsnr") -> tuple[Tensor, Tensor]:
    """Draw ``samples`` doses per conditioning slice and return their voxel-wise mean and std.

    Args:
        model: ε-predictor ``model(x_t (N,1,H,W), t (N,) long, cond (N,C,H,W)) -> (N,1,H,W)``.
        cond: (B, C, H, W) conditioning; its device is used.
        sampler: ``"ddpm"`` | ``"ddim"`` | ``"dpmpp2m"``.
        steps: network evaluations (1..T); ``ddpm`` with ``steps=T`` is the original sampler.
        eta: DDIM stochasticity (0 deterministic, 1 ≈ DDPM); ignored by the others.
        samples: K samples per slice, run as one batch of B*K.
        generator: torch.Generator for the initial noise and the per-step noise (reproducibility).
        spacing: timestep grid, ``"logsnr"`` (default) or ``"linear"`` (see :func:`timesteps`).
    Returns:
        mean, std: (B, 1, H, W) float32 in data units (dose / reference dose, [0, 1]);
        ``std`` is the unbiased voxel-wise standard deviation over the K samples (zeros if K = 1).
    """
    if sampler not in SAMPLERS:
        raise MddoseError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if int(samples) < 1:
        raise MddoseError(f"samples must be >= 1, got {samples}")
    if not eta >= 0:
        raise MddoseError(f"eta must be >= 0, got {eta}")
    ts = timesteps(diffusion, steps, spacing)
    B, K = cond.shape[0], int(samples)
    condk = cond.repeat_interleave(K, dim=0)
    x = _randn((B * K, 1, *cond.shape[2:]), generator, cond.device)
    it = range(len(ts))
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"sampling ({sampler}, {len(ts)} steps)", leave=False)
    f = _Eval(model, diffusion, condk)
    if sampler == "ddim":
        x = _ddim(f, x, ts, float(eta), generator, it)
    elif sampler == "ddpm":
        x = _ddpm(f, x, ts, generator, it)
    else:
        x = _dpmpp2m(f, x, ts, it)
    x = diffusion.to_data(x.clamp(-1.0, 1.0)).view(B, K, *x.shape[1:])
    mean = x.mean(dim=1)
    std = x.std(dim=1, correction=1) if K > 1 else torch.zeros_like(mean)
    return mean, std
