"""DiffDP noise predictor (Feng et al., MICCAI 2023) — OUR RECONSTRUCTION: the architecture is not published.

Known (abstract; MD-Dose paper): a slice-wise diffusion model whose noise predictor is made aware of the
anatomy (CT, PTV, OARs) by a structure encoder; 37.36 M parameters (MD-Dose Table 2); MD-Dose says its own
structure-encoder injection follows DiffDP. Everything below is our design: a convolutional DDPM U-Net
(Ho et al. 2020) with a convolutional structure encoder whose level outputs are ADDED to the denoiser's
encoder levels.

Layout for ``L = len(channel_mults)`` levels, ``c_i = channels * channel_mults[i]``, level i at ``H / 2^i``::

    time        Gaussian-Fourier features of t / t_divisor (TimestepEmbedding, dim ``channels``) ->
                SiLU -> Linear(4·channels) -> SiLU -> Linear(4·channels) = temb; every ResBlock2d adds
                Linear(SiLU(temb)) per channel
    structure   cond (B,C,H,W) -> 3x3 conv -> channels; level i: ``se_blocks`` ResBlock2d (no time) -> s_i
                (B, c_i, H/2^i, W/2^i); strided 3x3 conv between levels
    head        3x3 conv x_t (B,1,H,W) -> channels                                       at H
    encoder     level i: ``num_res_blocks`` x [ResBlock2d -> c_i (+ SelfAttention2d if i in attn_levels)];
                the level's last output += s_i; strided 3x3 conv down (not after the last level).
                Every block output (and the head, and every down-sampling) is kept as a skip (DDPM).
    middle      ResBlock2d, SelfAttention2d, ResBlock2d at c_{L-1}
    decoder     level i = L-1 .. 0: ``num_res_blocks + 1`` x [concat a skip -> ResBlock2d -> c_i (+ attention)];
                nearest x2 + 3x3 conv up (not after level 0)
    output      GroupNorm -> SiLU -> 3x3 conv -> out_channels                              at H

Input size: H and W must be divisible by ``2^(L-1)``: 16 for paper, 8 for small, 4 for tiny.

Presets and parameters (in_channels 9, counted):
  paper  widths 64/128/192/256/256, 2 ResBlocks per level, attention (4 heads) at levels 2-4 (32², 16², 8² for a
         128² slice: ADM's 32/16/8), 1 structure ResBlock per level: 37,235,457 (-0.33 % vs 37.36 M; structure
         encoder 4,259,008)
  small  widths 32/64/64/96, 1 ResBlock per level, attention at level 3: 2,597,761
  tiny   widths 8/16/16, 1 ResBlock per level, attention (2 heads) at level 2: 84,177
Choices where nothing is published (all of the above, and): Gaussian-Fourier time features shared with md-dose
(not DDPM's sinusoidal table); additive time embedding (not scale-shift); the structure features are added
after the last block of each level (so they reach both the next level and the decoder through the skip);
no dropout by default; GroupNorm with at most 32 groups of at least 4 channels (``nn.unet2d.group_norm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mddose.errors import MddoseError
from mddose.models.denoiser import ConditionedDenoiser, check_dropout_and_time
from mddose.models.registry import ModelConfig, register_model
from mddose.nn.embed import TimestepEmbedding
from mddose.utils.config import check_int_fields, check_int_tuple
from mddose.nn.unet2d import Downsample2d, PyramidEncoder2d, ResBlock2d, SelfAttention2d, Upsample2d, group_norm


@dataclass(frozen=True)
class DiffDPConfig(ModelConfig):
    """Hyper-parameters of the DiffDP reconstruction (defaults = the ``paper`` preset).

    in_channels: structure channels (CT, PTV, OARs). channels: base width; channel_mults: width of each level.
    num_res_blocks: ResBlocks per encoder level (decoder: one more). attn_levels: levels with self-attention
    (0 = full resolution). attn_heads: heads of every attention. se_blocks: ResBlocks per structure-encoder level.
    dropout: inside the ResBlocks of the denoiser. norm_groups: most GroupNorm groups (>= 4 channels per group).
    fourier_scale / t_divisor: timestep features, as md-dose. image_size: informational (training slice size).
    """

    in_channels: int = 9
    out_channels: int = 1
    channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 3, 4, 4)
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = (2, 3, 4)
    attn_heads: int = 4
    se_blocks: int = 1
    dropout: float = 0.0
    norm_groups: int = 32
    fourier_scale: float = 30.0
    t_divisor: float = 1000.0
    image_size: int = 128

    def __post_init__(self):
        where = "diffdp config"
        check_int_fields(where, self, ("in_channels", "out_channels", "channels", "num_res_blocks", "attn_heads",
                                       "se_blocks", "norm_groups", "image_size"))
        check_int_tuple(where, self, "channel_mults")
        check_int_tuple(where, self, "attn_levels", minimum=0, allow_empty=True)
        n = len(self.channel_mults)
        if any(i >= n for i in self.attn_levels):
            raise MddoseError(f"{where}: attn_levels must be level indices < {n}, got {self.attn_levels}")
        bad = [self.channels * m for i, m in enumerate(self.channel_mults)
               if (i in self.attn_levels or i == n - 1) and (self.channels * m) % self.attn_heads]
        if bad:
            raise MddoseError(f"{where}: attn_heads ({self.attn_heads}) must divide the attention widths, got {bad}")
        check_dropout_and_time(where, self)

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of each level."""
        return tuple(self.channels * m for m in self.channel_mults)


class ResAttnBlock(nn.Module):
    """ResBlock2d with the time embedding, optionally followed by SelfAttention2d.

    ``forward(x: (B, in_ch, H, W), temb: (B, temb_dim)) -> (B, out_ch, H, W)``.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, attn: bool, cfg: DiffDPConfig):
        super().__init__()
        self.res = ResBlock2d(in_ch, out_ch, temb_dim, cfg.dropout, cfg.norm_groups)
        self.attn = SelfAttention2d(out_ch, cfg.attn_heads, cfg.norm_groups) if attn else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:  # noqa: D102
        x = self.res(x, temb)
        return self.attn(x) if self.attn is not None else x


def conv_structure_encoder(cfg: DiffDPConfig) -> PyramidEncoder2d:
    """Convolutional structure encoder: ``se_blocks`` ResBlocks (no time input) per level.
    ``cond (B, C, H, W) -> [s_i (B, c_i, H/2^i, W/2^i) for each level]``."""
    widths, g = cfg.widths, cfg.norm_groups
    prev = [cfg.channels, *widths]
    stages = [nn.Sequential(*[ResBlock2d(prev[i] if j == 0 else c, c, groups=g) for j in range(cfg.se_blocks)])
              for i, c in enumerate(widths)]
    return PyramidEncoder2d(cfg.in_channels, cfg.channels, widths, stages)


class DiffDP(ConditionedDenoiser):
    """Denoiser ``model(x_t (B,1,H,W), t (B,), cond (B,C,H,W)) -> (B,1,H,W)``: ε, v or x0, as the diffusion config's
    ``prediction`` says (see module docstring)."""

    NAME = "diffdp"

    def __init__(self, cfg: DiffDPConfig):
        super().__init__()
        self.config = cfg
        temb = 4 * cfg.channels
        self.time = TimestepEmbedding(cfg.channels, (temb,), cfg.fourier_scale, cfg.t_divisor)
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(temb, temb))
        self.structure = conv_structure_encoder(cfg)
        self.head = nn.Conv2d(1, cfg.channels, kernel_size=3, padding=1)
        skips = self._build_encoder(cfg, temb)
        c = cfg.widths[-1]
        self.mid = nn.ModuleList([ResAttnBlock(c, c, temb, True, cfg), ResAttnBlock(c, c, temb, False, cfg)])
        self._build_decoder(cfg, temb, skips)
        c = cfg.widths[0]
        self.output = nn.Sequential(group_norm(c, cfg.norm_groups), nn.SiLU(),
                                    nn.Conv2d(c, cfg.out_channels, kernel_size=3, padding=1))

    def _build_encoder(self, cfg: DiffDPConfig, temb: int) -> list[int]:
        """Encoder levels and down-sampling; returns the channels of every skip, in push order."""
        skips, prev, n = [cfg.channels], cfg.channels, len(cfg.widths)
        self.enc, self.down = nn.ModuleList(), nn.ModuleList()
        for i, c in enumerate(cfg.widths):
            level = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.append(ResAttnBlock(prev, c, temb, i in cfg.attn_levels, cfg))
                prev = c
                skips.append(c)
            self.enc.append(level)
            if i < n - 1:
                self.down.append(Downsample2d(c))
                skips.append(c)
        return skips

    def _build_decoder(self, cfg: DiffDPConfig, temb: int, skips: list[int]) -> None:
        """Decoder levels (deepest first), each block consuming one skip, and up-sampling."""
        prev, widths = cfg.widths[-1], cfg.widths
        self.dec, self.up = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            level = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.append(ResAttnBlock(prev + skips.pop(), widths[i], temb, i in cfg.attn_levels, cfg))
                prev = widths[i]
            self.dec.append(level)
            if i > 0:
                self.up.append(Upsample2d(prev))

    def size_multiple(self) -> int:  # noqa: D102
        return 2 ** (len(self.enc) - 1)

    def denoise(self, x_t: Tensor, t: Tensor, s: list[Tensor]) -> Tensor:
        """x_t: (B, 1, H, W), t: (B,) timesteps, s: :meth:`encode_condition` of the cond → (B, 1, H, W)."""
        n = len(self.enc)
        temb = self.time_mlp(self.time(t)[0])                                      # (B, 4·channels)
        h = self.head(x_t)
        hs = [h]
        for i, level in enumerate(self.enc):
            for block in level:
                h = block(h, temb)
                hs.append(h)
            hs[-1] = h = h + s[i]                                                   # structure injection
            if i < n - 1:
                h = self.down[i](h)
                hs.append(h)
        for block in self.mid:
            h = block(h, temb)
        for k, level in enumerate(self.dec):
            for block in level:
                h = block(torch.cat([h, hs.pop()], 1), temb)
            if k < n - 1:
                h = self.up[k](h)
        return self.output(h)


PRESETS = {
    "paper": {"channels": 64, "channel_mults": (1, 2, 3, 4, 4), "num_res_blocks": 2, "attn_levels": (2, 3, 4),
              "attn_heads": 4, "se_blocks": 1, "image_size": 128},
    "small": {"channels": 32, "channel_mults": (1, 2, 2, 3), "num_res_blocks": 1, "attn_levels": (3,),
              "attn_heads": 4, "se_blocks": 1, "image_size": 128},
    "tiny": {"channels": 8, "channel_mults": (1, 2, 2), "num_res_blocks": 1, "attn_levels": (2,), "attn_heads": 2,
             "se_blocks": 1, "image_size": 32},
}


@register_model("diffdp", DiffDPConfig, presets=PRESETS, kind="diffusion", dims=2, fidelity="reconstruction",
                source="Feng et al., DiffDP, MICCAI 2023 (arXiv 2307.09794); architecture not published — "
                       "our reconstruction",
                notes="conv DDPM U-Net (ResBlocks, GroupNorm, SiLU, Fourier time embedding, attention at the two "
                      "deepest levels) + conv structure encoder added to the encoder levels; sized to 37.36 M")
def build_diffdp(cfg: DiffDPConfig) -> DiffDP:
    """Builder registered as ``"diffdp"``."""
    return DiffDP(cfg)
