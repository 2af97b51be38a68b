"""What every 2D diffusion denoiser shares: input checks and the split of ``forward`` into a condition part
(computed once per slice batch by the samplers) and a noise part.

    model(x_t, t, cond) == model.denoise(x_t, t, model.encode_condition(cond))

Subclasses set :attr:`NAME`, implement :meth:`denoise` and :meth:`size_multiple`, and either keep the default
:meth:`encode_condition` (``self.structure(cond)``: a structure encoder returning per-level features) or
override it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def check_denoiser_inputs(name: str, x_t: Tensor, t: Tensor, cond: Tensor, in_channels: int, mult: int) -> Tensor:
    """Validate ``x_t (B,1,H,W)``, ``t (B,) or scalar``, ``cond (B,in_channels,H,W)``, H and W divisible by ``mult``.

    Raises ValueError naming the model and the shapes; returns ``t`` as a ``(B,)`` tensor on x_t's device.
    """
    if x_t.dim() != 4 or x_t.shape[1] != 1:
        raise ValueError(f"{name}: x_t must be (B, 1, H, W), got {tuple(x_t.shape)}")
    b, _, h, w = x_t.shape
    if h % mult or w % mult:
        raise ValueError(f"{name}: H and W must be divisible by {mult}, got {h}x{w}")
    if cond.shape != (b, in_channels, h, w):
        raise ValueError(f"{name}: cond must be (B={b}, C={in_channels}, {h}, {w}), got {tuple(cond.shape)}")
    t = torch.as_tensor(t, device=x_t.device)
    if t.dim() == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"{name}: t must be (B={b},), got {tuple(t.shape)}")
    return t


def check_dropout_and_time(where: str, cfg: Any) -> None:
    """Shared config checks of the conv/Swin denoisers: ``dropout`` in [0, 1), ``t_divisor`` and
    ``fourier_scale`` > 0 (one-line MddoseError naming ``where``)."""
    from mddose.errors import MddoseError

    if not 0.0 <= cfg.dropout < 1.0:
        raise MddoseError(f"{where}: dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.t_divisor <= 0 or cfg.fourier_scale <= 0:
        raise MddoseError(f"{where}: t_divisor and fourier_scale must be > 0")


class ConditionedDenoiser(nn.Module):
    """Base of the 2D denoisers: ``forward(x_t (B,1,H,W), t (B,), cond (B,C,H,W)) -> (B,1,H,W)``."""

    NAME = "denoiser"

    def size_multiple(self) -> int:
        """H and W must be multiples of this (the network's total down-sampling)."""
        raise NotImplementedError

    def encode_condition(self, cond: Tensor) -> Any:
        """Everything the network needs of ``cond (B, C, H, W)``, independent of x_t and t (default: the
        structure encoder's per-level features)."""
        return self.structure(cond)

    def denoise(self, x_t: Tensor, t: Tensor, features: Any) -> Tensor:
        """x_t: (B, 1, H, W), t: (B,) timesteps, features: :meth:`encode_condition` of the cond → (B, 1, H, W)."""
        raise NotImplementedError

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """x_t: (B, 1, H, W), t: (B,) timesteps, cond: (B, C, H, W) → the network's output (B, 1, H, W)."""
        t = check_denoiser_inputs(self.NAME, x_t, t, cond, self.config.in_channels, self.size_multiple())
        return self.denoise(x_t, t, self.encode_condition(cond))
