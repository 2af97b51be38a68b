"""3D convolution blocks of the volumetric regression baselines (C3D, HD-UNet).

* :class:`ConvUnit3d` — Conv3d 3³ (bias) → InstanceNorm3d (affine) → ReLU, optionally with stride 2.
* :class:`UpConv3d` — trilinear ×2 (align_corners) → :class:`ConvUnit3d`.
* :class:`UNet3d` — the U-Net of each C3D stage (Liu et al. 2021): encoder level 1 two units, levels
  2..n one stride-2 unit then one unit (no pooling); decoder levels n-1..1: :class:`UpConv3d` to the
  lower width, concat the encoder skip, two units (one at level 1). Returns the last decoder feature map.
* :class:`DenseUnit3d` / :class:`DenseDown3d` — the densely connected units of HD-UNet (Nguyen et al.
  2019, in the C3D authors' PyTorch version): a g-channel unit whose output is concatenated to its
  input, resp. a stride-2 g-channel unit concatenated with a 2³ max-pooling of the input.

Conventions (from the C3D authors' code): Conv3d weights Kaiming-uniform (fan_in, ReLU gain), biases
zero, InstanceNorm weights one and biases zero — see :func:`init_kaiming_`. Tensor shapes are
``(B, C, D, H, W)``; every block keeps D, H, W except the stride-2 ones (halve them, D, H, W even)
and :class:`UpConv3d` (doubles them).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mddose.errors import MddoseError


def init_kaiming_(module: nn.Module) -> nn.Module:
    """Kaiming-uniform (fan_in, ReLU) Conv3d weights, zero biases, unit/zero InstanceNorm3d affines. In place."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.InstanceNorm3d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class ConvUnit3d(nn.Module):
    """Conv3d 3³ (padding 1, bias) → InstanceNorm3d(affine) → ReLU.

    x: (B, in_ch, D, H, W) → (B, out_ch, D/stride, H/stride, W/stride).
    Parameters: 27·in_ch·out_ch + out_ch (bias) + 2·out_ch (norm).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_ch, out_ch, stride
        self.conv = nn.Conv3d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=True)
        self.norm = nn.InstanceNorm3d(out_ch, affine=True)
        self.act = nn.ReLU(inplace=True)
        init_kaiming_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class UpConv3d(nn.Module):
    """Trilinear ×2 upsampling (align_corners=True) → :class:`ConvUnit3d` to ``out_ch``.

    x: (B, in_ch, D, H, W) → (B, out_ch, 2D, 2H, 2W).
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.in_channels, self.out_channels = in_ch, out_ch
        self.unit = ConvUnit3d(in_ch, out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.unit(F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True))


class UNet3d(nn.Module):
    """C3D's U-Net with ``n = len(widths)`` levels; returns the last decoder feature map.

    Layout (level l = 1..n, resolution /2^(l-1))::

        encoder level 1   ConvUnit3d(in_ch, w1), ConvUnit3d(w1, w1)                  (B, w1, D, H, W)
        encoder level l   ConvUnit3d(w_{l-1}, w_l, stride 2), ConvUnit3d(w_l, w_l)     (B, w_l, D/2^(l-1), ...)
        decoder level l   (l = n-1 .. 1) UpConv3d(w_{l+1} → w_l), concat encoder level l (2·w_l channels),
                          ConvUnit3d(2·w_l, w_l), ConvUnit3d(w_l, w_l) — the second unit only for l > 1

    x: (B, in_ch, D, H, W) with D, H, W divisible by 2^(n-1) → (B, widths[0], D, H, W).
    ``encoder[l-1]`` / ``decoder[l-1]`` / ``up[l-1]`` are the nn.Sequential / UpConv3d of level l
    (``decoder`` and ``up`` have n-1 entries, level 1 first).
    """

    def __init__(self, in_ch: int, widths: Sequence[int]):
        super().__init__()
        w = tuple(int(c) for c in widths)
        if len(w) < 1:
            raise ValueError("UNet3d: widths must hold at least one level")
        self.in_channels, self.widths, self.out_channels = in_ch, w, w[0]
        enc = [nn.Sequential(ConvUnit3d(in_ch, w[0]), ConvUnit3d(w[0], w[0]))]
        enc += [nn.Sequential(ConvUnit3d(w[i - 1], w[i], stride=2), ConvUnit3d(w[i], w[i])) for i in range(1, len(w))]
        self.encoder = nn.ModuleList(enc)
        self.up = nn.ModuleList([UpConv3d(w[i + 1], w[i]) for i in range(len(w) - 1)])
        self.decoder = nn.ModuleList([
            nn.Sequential(ConvUnit3d(2 * w[i], w[i]), *([ConvUnit3d(w[i], w[i])] if i > 0 else []))
            for i in range(len(w) - 1)])

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(len(self.decoder))):
            x = self.decoder[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return x


class DenseUnit3d(nn.Module):
    """HD-UNet dense unit: ``cat([x, ConvUnit3d(in_ch, growth)(x)])``.

    x: (B, in_ch, D, H, W) → (B, in_ch + growth, D, H, W).
    """

    def __init__(self, in_ch: int, growth: int):
        super().__init__()
        self.in_channels, self.growth, self.out_channels = in_ch, growth, in_ch + growth
        self.unit = ConvUnit3d(in_ch, growth)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.unit(x)], dim=1)


class DenseDown3d(nn.Module):
    """HD-UNet dense downsampling: ``cat([MaxPool3d(2)(x), ConvUnit3d(in_ch, growth, stride 2)(x)])``.

    x: (B, in_ch, D, H, W), D, H, W even → (B, in_ch + growth, D/2, H/2, W/2).
    """

    def __init__(self, in_ch: int, growth: int):
        super().__init__()
        self.in_channels, self.growth, self.out_channels = in_ch, growth, in_ch + growth
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        self.unit = ConvUnit3d(in_ch, growth, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.pool(x), self.unit(x)], dim=1)


def check_volume(model: str, cond: Tensor, in_channels: int, levels: int) -> None:
    """Raise ``ValueError`` naming ``model`` and the shape unless ``cond`` is (B, in_channels, D, H, W)
    with D, H, W divisible by 2^(levels-1) and more than one voxel at the coarsest level
    (InstanceNorm of a single voxel is degenerate)."""
    if not isinstance(cond, Tensor) or cond.dim() != 5:
        shape = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
        raise ValueError(f"{model}: cond must be (B, C, D, H, W), got {shape}")
    if cond.shape[1] != in_channels:
        raise ValueError(f"{model}: cond must have C={in_channels} channels (config in_channels), "
                         f"got shape {tuple(cond.shape)}")
    mult = 2 ** (levels - 1)
    d, h, w = cond.shape[2:]
    if d % mult or h % mult or w % mult or d * h * w == 0:
        raise ValueError(f"{model}: D, H, W must be divisible by {mult} (2^(levels-1), {levels} levels), "
                         f"got shape {tuple(cond.shape)}")
    if (d // mult) * (h // mult) * (w // mult) < 2:
        raise ValueError(f"{model}: volume {d}x{h}x{w} is a single voxel at the coarsest of {levels} levels; "
                         f"use at least {2 * mult} voxels along one axis")


def check_residual_channel(where: str, channel: int | None, in_channels: int) -> None:
    """One-line MddoseError ``{where}: ...`` unless ``channel`` is None or an input channel index."""
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int)
                                or not 0 <= channel < in_channels):
        raise MddoseError(f"{where}: residual_channel must be an input channel (0..{in_channels - 1}) or null, "
                          f"got {channel!r}")


def add_residual(out: Tensor, cond: Tensor, channel: int | None) -> Tensor:
    """The residual form: ``out (B, 1, D, H, W) + cond[:, channel]`` (the prior dose), or ``out`` (channel None)."""
    return out if channel is None else out + cond[:, channel:channel + 1]
