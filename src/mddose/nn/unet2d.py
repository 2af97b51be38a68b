"""Convolutional diffusion U-Net blocks (DDPM / ADM style): residual block with a time-embedding projection,
multi-head self-attention over the pixels, and x2 down/up-sampling.

All blocks work on ``(B, C, H, W)`` feature maps. GroupNorm (:func:`group_norm`) uses at most 32 groups and at
least 4 channels per group, so that any width works: the time embedding is added per channel just before a
GroupNorm, and with one channel per group the norm would erase it entirely.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int, groups: int = 32, min_group_size: int = 4) -> nn.GroupNorm:
    """GroupNorm over ``channels``: the most groups that divide ``channels``, at most ``groups`` of them, with at
    least ``min_group_size`` channels each (one group below that). 64 -> 16, 128 -> 32, 96 -> 24, 8 -> 2."""
    limit = max(1, min(groups, channels // min_group_size))
    return nn.GroupNorm(max(g for g in range(1, limit + 1) if channels % g == 0), channels)


class ResBlock2d(nn.Module):
    """Pre-activation residual block with an optional timestep embedding.

    ``h = conv3x3(SiLU(GN(x)))``; ``h += Linear(SiLU(temb))`` (per channel) when ``temb_dim`` is set;
    ``h = conv3x3(dropout(SiLU(GN(h))))``; output ``skip(x) + h`` where ``skip`` is a 1x1 conv when the
    channel count changes (identity otherwise).

    ``forward(x: (B, in_ch, H, W), temb: (B, temb_dim) | None) -> (B, out_ch, H, W)``.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int | None = None, dropout: float = 0.0,
                 groups: int = 32):
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        self.temb = nn.Sequential(nn.SiLU(), nn.Linear(temb_dim, out_ch)) if temb_dim else None
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, kernel_size=1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        """x: (B, in_ch, H, W), temb: (B, temb_dim) (required iff built with ``temb_dim``) → (B, out_ch, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb is not None:
            if temb is None:
                raise ValueError("ResBlock2d: built with a time embedding, but temb is None")
            h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over all pixels, pre-GroupNorm, residual.

    ``x + proj(MHA(GN(x)))`` with 1x1-conv q/k/v and output projections. ``(B, C, H, W) -> (B, C, H, W)``;
    cost grows with ``(H*W)^2``, so use it at low resolution only.
    """

    def __init__(self, channels: int, heads: int = 1, groups: int = 32):
        super().__init__()
        if heads < 1 or channels % heads:
            raise ValueError(f"SelfAttention2d: channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → (B, C, H, W)."""
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)                              # each (B, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)                          # (B, heads, HW, d)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample2d(nn.Module):
    """x2 down-sampling by a strided 3x3 conv. ``(B, in_ch, H, W) -> (B, out_ch, H/2, W/2)`` (H, W even)."""

    def __init__(self, in_ch: int, out_ch: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch or in_ch, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.conv(x)


class Upsample2d(nn.Module):
    """x2 up-sampling: nearest neighbour, then a 3x3 conv. ``(B, in_ch, H, W) -> (B, out_ch, 2H, 2W)``."""

    def __init__(self, in_ch: int, out_ch: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch or in_ch, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class PyramidEncoder2d(nn.Module):
    """A structure encoder's skeleton: ``cond (B, C, H, W) -> [s_i (B, widths[i], H/2^i, W/2^i) for each level]``.

    A 3x3 head conv to ``channels``, then ``stages[i]`` per level — level 0 at full resolution, a stride-2
    :class:`Downsample2d` before every other level. The stages (conv ResBlocks, Swin layers, ...) are the
    caller's: each maps the previous level's width to ``widths[i]``.
    """

    def __init__(self, in_channels: int, channels: int, widths: tuple[int, ...], stages: list[nn.Module]):
        super().__init__()
        if len(stages) != len(widths):
            raise ValueError(f"PyramidEncoder2d: {len(stages)} stages for {len(widths)} widths")
        self.head = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        self.levels = nn.ModuleList(stages)
        self.down = nn.ModuleList([Downsample2d(c) for c in widths[:-1]])

    def forward(self, cond: Tensor) -> list[Tensor]:  # noqa: D102
        h, feats = self.head(cond), []
        for i, level in enumerate(self.levels):
            h = level(h if i == 0 else self.down[i - 1](h))
            feats.append(h)
        return feats
