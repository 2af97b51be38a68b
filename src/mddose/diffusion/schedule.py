"""DDPM noise schedule and training loss (Ho et al. 2020); the network predicts ε (the paper), v or x0.

Units
-----
The trainer and the samplers speak *data units*: ``x0 = dose / reference_dose`` ∈ [0, ~1].
Internally the diffusion runs in *model space* ``[-1, 1]``: ``x = 2 * x0 - 1``
(:meth:`GaussianDiffusion.to_model`, inverse :meth:`GaussianDiffusion.to_data`). Every ``x_t``,
``q_sample`` argument and x̂0 clip refers to model space.

The schedule is hand-written (≈100 lines, tested against a NumPy computation) rather than taken
from ``diffusers``: it keeps the dependency list short, the constants are float64 and exact, and
the samplers need only ``alphas_cumprod``.

Parameterisation (``prediction``): ``"eps"`` — the network predicts the noise ε (Ho et al.; the paper);
``"v"`` — it predicts the velocity v = sqrt(ᾱ_t) ε − sqrt(1−ᾱ_t) x0 (Salimans & Ho 2022); ``"x0"`` — it
predicts the clean dose x0 itself (model space). The loss target is :meth:`GaussianDiffusion.target`, and
samplers read the output through :meth:`GaussianDiffusion.split_output`, so nothing else depends on the choice.

Loss weighting (``loss_weighting``, opt-in; :meth:`GaussianDiffusion.loss_weights`): ``"uniform"`` (default) is
Ho et al.'s simple loss, the plain MSE of the target. ``"min_snr"`` is Min-SNR-γ (Hang et al., "Efficient
Diffusion Training via Min-SNR Weighting Strategy", ICCV 2023): with SNR_t = ᾱ_t / (1 − ᾱ_t), the loss of
timestep t, written on x0, is weighted by min(SNR_t, γ). Since ‖ε − ε̂‖² = SNR_t ‖x0 − x̂0‖² and
‖v − v̂‖² = (SNR_t + 1) ‖x0 − x̂0‖², the weight on the MSE of each target is

* ε-prediction: min(SNR_t, γ) / SNR_t  (= min(1, γ / SNR_t); γ = ∞ is the uniform loss);
* v-prediction: min(SNR_t, γ) / (SNR_t + 1);
* x0-prediction: min(SNR_t, γ);

as in the authors' code (``guided_diffusion/gaussian_diffusion.py`` of TiankaiHang/Min-SNR-Diffusion-Training,
``min_snr_k`` for ε and x0, ``vmin_snr_k`` for v); they recommend γ = 5 (``min_snr_gamma``).

Loss norm (``loss_type``, opt-in): ``"mse"`` (default, Ho et al.) or ``"l1"`` — the mean absolute error of the
target, as the OpenKBP baselines (C3D, HD-UNet) train and as the dose score measures. With x0-prediction the
MSE's optimum at high noise is the conditional *mean* dose, the L1's the conditional *median*, which might keep
the steps between dose levels sharper — but at a short CPU budget it learned significantly worse (BENCHMARKS.md,
``levers-x0-cpu``), so it stays off by default. Min-SNR-γ weights are derived for squared errors, so ``"l1"``
takes the uniform weighting only.

A spatial weight (``loss(..., weight=...)``, (B, 1, H, W)) turns the mean into a weighted mean normalised by
the weight sum: ``Σ λ_t w (out − target)² / Σ w`` (the trainer builds it from the possible-dose mask,
``diffusion.mask_weight``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
import torch.nn.functional as F

from mddose.diffusion.config import LOSS_TYPES, LOSS_WEIGHTINGS, PREDICTIONS, SCHEDULES, DiffusionConfig  # noqa: F401
from mddose.errors import MddoseError

#: the network: ``model(x_t (B,1,H,W), t (B,) long, cond (B,C,H,W)) -> (B,1,H,W)`` (ε, v or x0)
Network = Callable[[Tensor, Tensor, Tensor], Tensor]


def make_betas(num_timesteps: int, beta_start: float, beta_end: float, schedule: str) -> np.ndarray:
    """(T,) float64 betas. ``linear``: Ho et al.; ``cosine``: Nichol & Dhariwal (2021), clipped at 0.999."""
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    if schedule == "cosine":
        s = 0.008
        f = lambda t: math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        return np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(num_timesteps)], dtype=np.float64)
    raise MddoseError(f"diffusion schedule: unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


class GaussianDiffusion:
    """Discrete DDPM with ``num_timesteps`` steps; the network predicts the noise ε (default, as in
    the paper), the velocity v = sqrt(ᾱ_t) ε − sqrt(1−ᾱ_t) x0 (``prediction="v"``, Salimans & Ho 2022) or
    the clean sample x0 (``prediction="x0"``).

    v-prediction regresses x0 directly at high noise levels, which makes the structure → dose mapping
    learnable in a few hundred steps (the CPU demo uses it); samplers see all three through
    :meth:`split_output`, so they never know which parameterisation drives them.

    ``loss_weighting`` (``"uniform"`` | ``"min_snr"``) and ``min_snr_gamma`` (γ > 0, ``inf`` allowed) weight
    the training loss per timestep (see the module docstring); ``loss_type`` (``"mse"`` | ``"l1"``) is the norm of
    the error; neither changes sampling.

    Attributes (float64 CPU tensors, shape (T,)): ``betas``, ``alphas``, ``alphas_cumprod``
    (ᾱ_t), ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``.
    """

    def __init__(self, config: DiffusionConfig | int | None = None, **settings: Any):
        """From a :class:`~mddose.diffusion.config.DiffusionConfig` (its one default and one check of every
        setting), or from its fields as keywords (``GaussianDiffusion(prediction="v")``; a leading int is
        ``num_timesteps``)."""
        if not isinstance(config, DiffusionConfig):
            config = DiffusionConfig(**({} if config is None else {"num_timesteps": config}), **settings)
        elif settings:
            raise TypeError("GaussianDiffusion: give a DiffusionConfig or keywords, not both")
        self.config = config
        self.prediction, self.loss_weighting = config.prediction, config.loss_weighting
        self.min_snr_gamma, self.loss_type = float(config.min_snr_gamma), config.loss_type
        self.num_timesteps, self.schedule = int(config.num_timesteps), config.schedule
        self.beta_start, self.beta_end = float(config.beta_start), float(config.beta_end)
        schedule = self.schedule
        betas = make_betas(self.num_timesteps, self.beta_start, self.beta_end, schedule)
        self.betas = torch.from_numpy(betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()

    # ------------------------------------------------------------------ config / units
    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``diffusion`` entry (:meth:`DiffusionConfig.schedule_dict`)."""
        return self.config.schedule_dict()

    @classmethod
    def from_dict(cls, d: Any, where: str = "diffusion config") -> "GaussianDiffusion":
        """Inverse of :meth:`to_dict` (missing keys: the defaults); a non-object, unknown keys or bad values →
        one-line :class:`MddoseError` naming ``where``."""
        if not isinstance(d, dict):
            raise MddoseError(f"{where}: diffusion must be a JSON object, got {type(d).__name__}")
        try:
            return cls(DiffusionConfig.from_dict(d, where))
        except MddoseError as exc:
            msg = str(exc)
            raise MddoseError(msg if msg.startswith(where) else f"{where}: {msg}") from None

    @staticmethod
    def to_model(x0: Tensor) -> Tensor:
        """Data units [0, 1] → model space [-1, 1]."""
        return 2.0 * x0 - 1.0

    @staticmethod
    def to_data(x: Tensor) -> Tensor:
        """Model space [-1, 1] → data units [0, 1]."""
        return (x + 1.0) * 0.5

    def _extract(self, arr: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``arr[t]`` as (B, 1, ..., 1) in ``like``'s dtype/device."""
        out = arr.to(like.device)[t.to(like.device).long()].to(like.dtype)
        return out.view(-1, *([1] * (like.ndim - 1)))

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε.  x0, noise: (B, ...) in model space; t: (B,) long."""
        return self._extract(self.sqrt_alphas_cumprod, t, x0) * x0 + \
            self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def split_output(self, x_t: Tensor, t: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """The network output at (x_t, t) → (x̂0 unclipped, ε̂), both (B, ...) in model space."""
        s0 = self._extract(self.sqrt_alphas_cumprod, t, x_t)
        s1 = self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if self.prediction == "v":
            return s0 * x_t - s1 * out, s1 * x_t + s0 * out
        if self.prediction == "x0":
            return out, (x_t - s0 * out) / s1
        return (x_t - s1 * out) / s0, out

    def target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What the network is trained to output (model space): ε, v = sqrt(ᾱ_t) ε − sqrt(1−ᾱ_t) x0, or x0."""
        if self.prediction == "v":
            return self._extract(self.sqrt_alphas_cumprod, t, x0) * noise - \
                self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        if self.prediction == "x0":
            return x0
        return noise

    def snr(self, t: Tensor) -> Tensor:
        """(B,) float64 signal-to-noise ratio SNR_t = ᾱ_t / (1 − ᾱ_t) of (B,) timesteps ``t`` (on the CPU)."""
        ab = self.alphas_cumprod[t.cpu().long()]
        return ab / (1.0 - ab)

    def loss_weights(self, t: Tensor) -> Tensor:
        """(B,) float64 per-timestep weights λ_t of the target's MSE (on the CPU): ones for ``"uniform"``;
        for ``"min_snr"``: min(SNR_t, γ) / SNR_t (ε), min(SNR_t, γ) / (SNR_t + 1) (v), min(SNR_t, γ) (x0)."""
        snr = self.snr(t)
        if self.loss_weighting == "uniform":
            return torch.ones_like(snr)
        clamped = snr.clamp(max=self.min_snr_gamma)
        if self.prediction == "v":
            return clamped / (snr + 1.0)
        if self.prediction == "x0":
            return clamped
        return clamped / snr

    def sample_t(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """(batch,) long timesteps uniform in [0, T)."""
        gdev = generator.device if generator is not None else device
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=gdev).to(device)

    def loss(self, model: nn.Module | Network, x0: Tensor, cond: Tensor, generator: torch.Generator | None = None,
             *, t: Tensor | None = None, noise: Tensor | None = None, weight: Tensor | None = None) -> Tensor:
        """Scalar MSE (``loss_type="l1"``: mean absolute error) between the target (ε, v or x0) and
        ``model(x_t, t, cond)`` (Ho et al.'s simple loss), weighted per timestep by :meth:`loss_weights` and per
        pixel by ``weight``.

        Args:
            x0: (B, 1, H, W) target in data units (dose / reference dose, [0, ~1]).
            cond: (B, C, H, W) conditioning.
            generator: draws ``t`` and ``noise`` when they are not given.
            t: (B,) long timesteps; noise: (B, 1, H, W) standard normal (model space).
            weight: optional (B, 1, H, W) non-negative pixel weights (anything broadcastable to ``x0``); the loss is
                then ``Σ λ_t·weight·(out − target)² / Σ weight`` (0 when every weight is 0; ``|out − target|``
                for L1). Without it and with ``loss_weighting="uniform"`` the loss is exactly ``F.mse_loss``
                (the default, unchanged) or ``F.l1_loss``.
        """
        xm = self.to_model(x0)
        if t is None:
            t = self.sample_t(xm.shape[0], generator, xm.device)
        if noise is None:
            gdev = generator.device if generator is not None else xm.device
            noise = torch.randn(xm.shape, generator=generator, device=gdev, dtype=xm.dtype).to(xm.device)
        if weight is not None and not _fits(weight.shape, xm.shape):
            raise MddoseError(f"diffusion loss: weight of shape {tuple(weight.shape)} does not fit the dose "
                              f"{tuple(xm.shape)}")
        x_t = self.q_sample(xm, t, noise)
        pred = model(x_t, t, cond)
        target = self.target(xm, t, noise)
        l1 = self.loss_type == "l1"
        if weight is None and self.loss_weighting == "uniform":
            return (F.l1_loss if l1 else F.mse_loss)(pred.float(), target.float())
        diff = pred.float() - target.float()
        err = diff.abs() if l1 else diff ** 2
        lam = self.loss_weights(t).to(device=err.device, dtype=err.dtype).view(-1, *([1] * (err.ndim - 1)))
        if weight is None:
            return (lam * err).mean()
        w = weight.to(device=err.device, dtype=err.dtype).expand_as(err)
        return (lam * w * err).sum() / w.sum().clamp(min=torch.finfo(err.dtype).tiny)


def _fits(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` without enlarging it."""
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False
