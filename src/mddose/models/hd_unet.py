"""HD-UNet — hierarchically densely connected 3D U-Net (Nguyen et al., Phys Med Biol 64:065020, 2019).

The original paper's layer details and code are not published; this is the C3D authors' PyTorch version
(Liu et al. 2021, used for their OpenKBP comparison, which adds InstanceNorm). Layout for
``cond (B, C, D, H, W)``, C = in_channels (9), growth g = 16, 5 levels (D, H, W divisible by 16)::

    encoder level 1   2 × DenseUnit3d                       (B, C + 2g  =  41, D,    H,    W)
    encoder level 2   DenseDown3d + 2 × DenseUnit3d         (B, C + 5g  =  89, D/2,  H/2,  W/2)
    encoder level 3   DenseDown3d + 2 × DenseUnit3d         (B, C + 8g  = 137, D/4,  ...)
    encoder level 4   DenseDown3d + 2 × DenseUnit3d         (B, C + 11g = 185, D/8,  ...)
    encoder level 5   DenseDown3d + 4 × DenseUnit3d         (B, C + 16g = 265, D/16, ...)
    decoder level l   (l = 4 .. 1) UpConv3d(→ 64) (trilinear ×2 then unit), concat encoder level l,
                      ConvUnit3d(64 + skip → w_l), ConvUnit3d(w_l → w_l); w_4..w_1 = 256, 128, 64, 32
    head              Conv3d 1³ 32 → 1 (bias)                → dose/70 (B, 1, D, H, W)

Dense unit: Conv3d 3³ → g channels → InstanceNorm3d(affine) → ReLU, concatenated to its input. Dense
downsampling: the same unit with stride 2, concatenated with MaxPool3d(2) of the input (see
:mod:`mddose.nn.conv3d`). Kaiming-uniform init and zero bias in every 3³ unit; the 1×1×1 head keeps PyTorch's
default init (the convention of the C3D authors' code). No final activation; loss: masked L1 (trainer).

Parameters (in_channels 9, measured): paper 7,249,089 (the spec's ≈ 7.25 M); small 1,861,985; tiny 29,469.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mddose.errors import MddoseError
from mddose.utils.config import check_grid_size, check_int_fields, check_int_tuple
from mddose.models.registry import ModelConfig, register_model
from mddose.nn.conv3d import (ConvUnit3d, DenseDown3d, DenseUnit3d, UpConv3d, add_residual, check_residual_channel,
                               check_volume)

NAME = "hd-unet"


@dataclass(frozen=True)
class HDUNetConfig(ModelConfig):
    """Hyper-parameters of HD-UNet (defaults = the C3D authors' network, 7,249,089 parameters with 9 inputs).

    in_channels: input channels C (9 for OpenKBP). out_channels: 1 (dose / 70).
    growth: channels g added by every dense unit. levels: resolution levels (>= 2).
    encoder_units: dense units per encoder level below the deepest (after the downsampling at levels >= 2).
    bottleneck_units: dense units at the deepest level (after its downsampling).
    decoder_widths: output channels of the decoder levels, deepest first (levels - 1 entries).
    up_channels: channels of the unit after each trilinear upsampling, before the skip is concatenated.
    grid_size: edge of the cubic volume the model is trained on and predicts at — the data's (``volume.size``,
    written here by the trainer and by the checkpoint loader); None = not known yet. A preset recommends one
    (``paper``: 128 = OpenKBP's native grid; ``small``: a coarser 64³, CPU-sized) as the default of
    ``volume.size``; any grid divisible by 2^(levels-1) is accepted by the network itself.
    residual_channel: the residual form — the input channel (the prior dose) added to the output, so that the
    network predicts dose minus prior; None = off. Written by the trainer from ``volume.residual``.
    """

    in_channels: int = 9
    out_channels: int = 1
    growth: int = 16
    levels: int = 5
    encoder_units: int = 2
    bottleneck_units: int = 4
    decoder_widths: tuple[int, ...] = (256, 128, 64, 32)
    up_channels: int = 64
    grid_size: int | None = None
    residual_channel: int | None = None

    def __post_init__(self):
        where = "hd-unet config"
        check_residual_channel(where, self.residual_channel, self.in_channels)
        check_int_tuple(where, self, "decoder_widths", allow_empty=True)
        check_int_fields(where, self, ("in_channels", "out_channels", "growth", "levels", "up_channels"))
        check_int_fields(where, self, ("encoder_units", "bottleneck_units"), minimum=0)
        if self.levels < 2:
            raise MddoseError(f"{where}: levels must be >= 2, got {self.levels}")
        if len(self.decoder_widths) != self.levels - 1:
            raise MddoseError(f"{where}: decoder_widths must hold levels - 1 = {self.levels - 1} widths "
                              f"(deepest first), got {self.decoder_widths}")
        check_grid_size(where, self.grid_size, self.levels)


class HDUNet(nn.Module):
    """HD-UNet: ``model(cond (B, C, D, H, W)) -> dose/70 (B, 1, D, H, W)``.

    ``encoder[l-1]`` is the nn.Sequential of level l (DenseDown3d first for l >= 2, then dense units);
    ``encoder_channels[l-1]`` its output channels (paper: 41, 89, 137, 185, 265). ``up[k]`` / ``decoder[k]``
    are decoder level ``levels - 1 - k`` (deepest first). See the module docstring for the layout.
    Parameters (in_channels 9): paper 7,249,089, small 1,861,985, tiny 29,469.
    """

    def __init__(self, cfg: HDUNetConfig):
        super().__init__()
        self.config = cfg
        g, c = cfg.growth, cfg.in_channels
        enc, chans = [], []
        for lvl in range(cfg.levels):
            blocks: list[nn.Module] = []
            if lvl > 0:
                blocks.append(DenseDown3d(c, g))
                c += g
            for _ in range(cfg.bottleneck_units if lvl == cfg.levels - 1 else cfg.encoder_units):
                blocks.append(DenseUnit3d(c, g))
                c += g
            enc.append(nn.Sequential(*blocks))
            chans.append(c)
        self.encoder = nn.ModuleList(enc)
        self.encoder_channels = tuple(chans)
        up, dec, prev = [], [], c
        for k, w in enumerate(cfg.decoder_widths):
            skip = chans[cfg.levels - 2 - k]
            up.append(UpConv3d(prev, cfg.up_channels))
            dec.append(nn.Sequential(ConvUnit3d(cfg.up_channels + skip, w), ConvUnit3d(w, w)))
            prev = w
        self.up = nn.ModuleList(up)
        self.decoder = nn.ModuleList(dec)
        self.head = nn.Conv3d(prev, cfg.out_channels, kernel_size=1, bias=True)

    def forward(self, cond: Tensor) -> Tensor:
        """cond: (B, C, D, H, W) → dose/70 (B, out_channels, D, H, W)."""
        check_volume(NAME, cond, self.config.in_channels, self.config.levels)
        x, skips = cond, []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.decoder):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return add_residual(self.head(x), cond, self.config.residual_channel)

    def training_outputs(self, cond: Tensor) -> list[tuple[float, Tensor]]:
        """cond: (B, C, D, H, W) → ``[(1.0, dose/70 (B, out_channels, D, H, W))]``."""
        return [(1.0, self(cond))]


PRESETS = {
    # the C3D authors' network: 7,249,089 parameters
    "paper": {"growth": 16, "levels": 5, "encoder_units": 2, "bottleneck_units": 4,
              "decoder_widths": (256, 128, 64, 32), "up_channels": 64, "grid_size": 128},
    # half growth / up channels / decoder widths, same layout: 1,861,985 parameters; trains on a coarser 64³ grid
    "small": {"growth": 8, "levels": 5, "encoder_units": 2, "bottleneck_units": 4,
              "decoder_widths": (128, 64, 32, 16), "up_channels": 32, "grid_size": 64},
    # for tests: 3 levels, 29,469 parameters, 16³ volumes
    "tiny": {"growth": 4, "levels": 3, "encoder_units": 1, "bottleneck_units": 2,
             "decoder_widths": (8, 8), "up_channels": 4, "grid_size": 16},
}


@register_model(NAME, HDUNetConfig, presets=PRESETS, kind="regression", dims=3, fidelity="official-code",
                source="Nguyen et al., Phys Med Biol 64:065020 (2019); the C3D authors' PyTorch version",
                notes="the original paper's code is unpublished: layer for layer from the C3D authors' PyTorch "
                      "version (adds InstanceNorm); small: trains on a 64³ grid on CPU")
def build_hd_unet(cfg: HDUNetConfig) -> HDUNet:
    """Builder registered as ``"hd-unet"``."""
    return HDUNet(cfg)
