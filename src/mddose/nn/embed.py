"""Embeddings and resampling layers of the MD-Dose UNet: patch embedding, pixel-shuffle upsampling,
channel LayerNorm and the Gaussian-Fourier timestep embedding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of every pixel. ``(B, C, H, W) -> (B, C, H, W)``."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class PatchEmbed2d(nn.Module):
    """Non-overlapping patch embedding (Vim/ViT style): conv with kernel = stride, then channel LayerNorm.

    ``(B, in_ch, H, W) -> (B, out_ch, H/stride, W/stride)``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 2, norm: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, out_ch, kernel_size=stride, stride=stride)
        self.norm = LayerNorm2d(out_ch) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.norm(self.proj(x))


class PixelShuffleUpsample(nn.Module):
    """x2 upsampling: 3x3 conv to ``4 * out_ch`` then ``PixelShuffle(2)``. ``(B, in, H, W) -> (B, out, 2H, 2W)``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, 4 * out_ch, kernel_size=3, padding=1, bias=False)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.shuffle(self.conv(x))


class GaussianFourierFeatures(nn.Module):
    """Fixed random Fourier features (Song et al. 2021): ``[sin(2π W t), cos(2π W t)]``, W ~ N(0, scale²).

    W is a buffer (saved with the weights, never trained). ``t: (B,) -> (B, dim)``.
    ``frozen_parameter=True`` stores the same W as an ``nn.Parameter`` with ``requires_grad=False`` instead, as
    MD-Dose's public code does: counted by ``parameters()``, still never trained (same state-dict key).
    """

    def __init__(self, dim: int, scale: float = 30.0, frozen_parameter: bool = False):
        super().__init__()
        if dim % 2:
            raise ValueError(f"Fourier feature dim must be even, got {dim}")
        w = torch.randn(dim // 2) * scale
        if frozen_parameter:
            self.W = nn.Parameter(w, requires_grad=False)
        else:
            self.register_buffer("W", w)

    def forward(self, t: Tensor) -> Tensor:  # noqa: D102
        proj = t.float()[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Timestep → one embedding per UNet level: Fourier features, then per level ``Swish + Linear``.

    Args:
        dim: Fourier feature size.
        out_dims: channels of each level; ``forward`` returns a list of ``(B, out_dims[i])``.
        scale: std of the Fourier frequencies (30 as in the MD-Dose code).
        t_divisor: timesteps are divided by this first (1000: integer DDPM steps → [0, 1)).
        frozen_parameter: the Fourier frequencies as a frozen parameter (see :class:`GaussianFourierFeatures`).
    """

    def __init__(self, dim: int, out_dims: tuple[int, ...] | list[int], scale: float = 30.0,
                 t_divisor: float = 1000.0, frozen_parameter: bool = False):
        super().__init__()
        self.t_divisor = float(t_divisor)
        self.features = GaussianFourierFeatures(dim, scale, frozen_parameter)
        self.proj = nn.ModuleList([nn.Sequential(nn.SiLU(), nn.Linear(dim, c)) for c in out_dims])

    def forward(self, t: Tensor) -> list[Tensor]:
        """t: (B,) integer or float timesteps → [(B, out_dims[i]) for each level]."""
        emb = self.features(t.float() / self.t_divisor)
        return [p(emb) for p in self.proj]
