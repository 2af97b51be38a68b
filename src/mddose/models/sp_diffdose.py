"""SP-DiffDose noise predictor (Fu et al., arXiv 2312.06187) — OUR RECONSTRUCTION: the architecture is not published.

Known (abstract; MD-Dose paper): a conditional diffusion model; a structural encoder extracts anatomy
features that are blended with the noisy dose at multiple scales; Swin Transformer blocks in the deeper
layers; a projector applied to the fused features; a "transformer-based UNet" of 84.11 M parameters
(MD-Dose Table 2). Everything below is our design.

Layout for ``L = len(channel_mults)`` levels, ``c_i = channels * channel_mults[i]``, level i at ``H / 2^i``;
the last ``swin_levels`` levels are Swin levels, the others conv levels::

    time        Fourier features of t / t_divisor (TimestepEmbedding, dim ``channels``) -> SiLU -> Linear
                (4·channels) = temb, as DiffDP
    stage       conv level: ``num_res_blocks`` ResBlock2d (time embedding added inside each);
                Swin level: 1x1 conv to c_i (when the width changes) + Linear(SiLU(temb)), then
                SwinLayer2d(``swin_depth`` blocks, shifts 0 / window//2, ``c_i // head_dim`` heads)
    structure   cond -> 3x3 conv -> channels; level i: the same stage kind without time embedding
                (``se_depth`` blocks) -> s_i (B, c_i, H/2^i, W/2^i); strided 3x3 conv between levels
    head        3x3 conv x_t (B,1,H,W) -> channels                                           at H
    encoder     level i: stage -> c_i; FUSION with s_i: 1x1 conv(concat(h, s_i)) 2c_i -> c_i, then the
                PROJECTOR 1x1 conv c_i -> 2c_i, GELU, 1x1 conv 2c_i -> c_i (Linear-GELU-Linear per pixel);
                the result is level i's skip; strided 3x3 conv down (not after the last level)
    middle      Swin stage at c_{L-1} (``mid_depth`` blocks)
    decoder     level i = L-1 .. 0: concat skip_i -> stage 2c_i -> c_i; nearest x2 + 3x3 conv to c_{i-1}
    output      GroupNorm -> SiLU -> 3x3 conv -> out_channels                                  at H

Input size: H and W must be divisible by ``2^(L-1)`` (8 for paper and small, 4 for tiny). Windows do not
constrain the size (SwinBlock2d pads a map that is not a multiple of the window and masks the padding), but
maps that are multiples of the window waste no compute: with the paper preset (window 8) at 128² the Swin
levels are 32² and 16², at 256² 64² and 32².

Presets and parameters (in_channels 9, counted):
  paper  widths 96/192/384/768 (Swin-T's), conv levels 0-1 with 1 ResBlock each, Swin levels 2-3 with 2 blocks
         each (3/6/12/24 heads of 32 channels, window 8), a 2-block Swin bottleneck, 2 blocks per structure-encoder
         level: 86,436,649 (+2.77 % vs 84.11 M; structure encoder 21,375,912)
  small  widths 32/64/64/128, Swin levels 2-3, 1 ResBlock / 2 Swin blocks per level, window 8: 2,571,207
  tiny   widths 8/16/16, Swin level 2 (window 4, 2 heads), 2-block bottleneck: 61,671
Choices where nothing is published (all of the above, and): the projector is not residual (the fused feature
is replaced by its projection, as a contrastive-learning projector); the structure encoder has the denoiser's
conv/Swin split; time enters the Swin stages as an added per-channel embedding before the blocks; Fourier time
features as md-dose; GroupNorm with at most 32 groups of at least 4 channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mddose.errors import MddoseError
from mddose.models.denoiser import ConditionedDenoiser, check_dropout_and_time
from mddose.models.registry import ModelConfig, register_model
from mddose.nn.embed import TimestepEmbedding
from mddose.nn.swin import SwinLayer2d
from mddose.utils.config import check_int_fields, check_int_tuple
from mddose.nn.unet2d import Downsample2d, PyramidEncoder2d, ResBlock2d, Upsample2d, group_norm


@dataclass(frozen=True)
class SPDiffDoseConfig(ModelConfig):
    """Hyper-parameters of the SP-DiffDose reconstruction (defaults = the ``paper`` preset).

    in_channels: structure channels (CT, PTV, OARs). channels / channel_mults: base width, width of each level.
    swin_levels: how many of the deepest levels use Swin blocks (the others conv ResBlocks), 1 .. L.
    num_res_blocks: ResBlocks per conv level (encoder and decoder). swin_depth: Swin blocks per Swin level
    (encoder and decoder). mid_depth: Swin blocks of the bottleneck. head_dim: channels per attention head.
    window: Swin window side. se_depth: blocks per structure-encoder level. projector_ratio: hidden width of the
    projector relative to the level width. dropout: inside the denoiser's ResBlocks. norm_groups: most GroupNorm
    groups (>= 4 channels per group).
    fourier_scale / t_divisor: timestep features, as md-dose. image_size: informational (training slice size).
    """

    in_channels: int = 9
    out_channels: int = 1
    channels: int = 96
    channel_mults: tuple[int, ...] = (1, 2, 4, 8)
    swin_levels: int = 2
    num_res_blocks: int = 1
    swin_depth: int = 2
    mid_depth: int = 2
    head_dim: int = 32
    window: int = 8
    se_depth: int = 2
    projector_ratio: int = 2
    dropout: float = 0.0
    norm_groups: int = 32
    fourier_scale: float = 30.0
    t_divisor: float = 1000.0
    image_size: int = 128

    def __post_init__(self):
        where = "sp-diffdose config"
        check_int_fields(where, self, ("in_channels", "out_channels", "channels", "swin_levels", "num_res_blocks",
                                       "swin_depth", "head_dim", "window", "se_depth", "projector_ratio",
                                       "norm_groups", "image_size"))
        check_int_fields(where, self, ("mid_depth",), minimum=0)
        check_int_tuple(where, self, "channel_mults")
        n = len(self.channel_mults)
        if self.swin_levels > n:
            raise MddoseError(f"{where}: swin_levels must be between 1 and the number of levels ({n}), "
                              f"got {self.swin_levels}")
        bad = [c for c in self.widths[n - self.swin_levels:] if c % self.heads(c)]
        if bad:
            raise MddoseError(f"{where}: head_dim {self.head_dim} gives head counts that do not divide the Swin "
                              f"widths {bad}")
        check_dropout_and_time(where, self)

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of each level."""
        return tuple(self.channels * m for m in self.channel_mults)

    def heads(self, width: int) -> int:
        """Attention heads of a Swin level of ``width`` channels."""
        return max(1, width // self.head_dim)

    def is_swin(self, level: int) -> bool:
        """Whether ``level`` (0 = full resolution) uses Swin blocks."""
        return level >= len(self.channel_mults) - self.swin_levels


class ConvStage(nn.Module):
    """``depth`` ResBlock2d (the first maps in_ch -> out_ch). ``(x (B,in,H,W), temb|None) -> (B,out,H,W)``."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int | None, depth: int, cfg: SPDiffDoseConfig,
                 dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList([ResBlock2d(in_ch if i == 0 else out_ch, out_ch, temb_dim, dropout,
                                                cfg.norm_groups) for i in range(depth)])

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:  # noqa: D102
        for block in self.blocks:
            x = block(x, temb)
        return x


class SwinStage(nn.Module):
    """1x1 conv in_ch -> out_ch (if they differ), + Linear(SiLU(temb)) if ``temb_dim``, then SwinLayer2d(depth).

    ``(x (B, in_ch, H, W), temb (B, temb_dim) | None) -> (B, out_ch, H, W)``.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int | None, depth: int, cfg: SPDiffDoseConfig):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, out_ch, kernel_size=1) if in_ch != out_ch else nn.Identity()
        self.temb = nn.Sequential(nn.SiLU(), nn.Linear(temb_dim, out_ch)) if temb_dim else None
        self.layer = SwinLayer2d(out_ch, depth, cfg.heads(out_ch), cfg.window)

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:  # noqa: D102
        x = self.proj(x)
        if self.temb is not None:
            x = x + self.temb(temb)[:, :, None, None]
        return self.layer(x)


def _stage(level: int, in_ch: int, temb_dim: int | None, cfg: SPDiffDoseConfig, structure: bool) -> nn.Module:
    """The stage of ``level`` (conv or Swin) for the denoiser, or for the structure encoder if ``structure``."""
    out_ch = cfg.widths[level]
    if cfg.is_swin(level):
        depth = cfg.se_depth if structure else cfg.swin_depth
        return SwinStage(in_ch, out_ch, temb_dim, depth, cfg)
    depth = cfg.se_depth if structure else cfg.num_res_blocks
    return ConvStage(in_ch, out_ch, temb_dim, depth, cfg, 0.0 if structure else cfg.dropout)


class FusionProjector(nn.Module):
    """Fuse denoiser and structure features, then the projector.

    ``f = Conv1x1(concat(h, s))`` (2c -> c); ``out = Conv1x1(GELU(Conv1x1(f)))`` (c -> ratio·c -> c), i.e.
    Linear -> GELU -> Linear on every pixel. ``(h, s: (B, c, H, W)) -> (B, c, H, W)``.
    """

    def __init__(self, channels: int, ratio: int = 2):
        super().__init__()
        self.fuse = nn.Conv2d(2 * channels, channels, kernel_size=1)
        self.projector = nn.Sequential(nn.Conv2d(channels, ratio * channels, kernel_size=1), nn.GELU(),
                                       nn.Conv2d(ratio * channels, channels, kernel_size=1))

    def forward(self, h: Tensor, s: Tensor) -> Tensor:  # noqa: D102
        return self.projector(self.fuse(torch.cat([h, s], dim=1)))


def structure_encoder(cfg: SPDiffDoseConfig) -> PyramidEncoder2d:
    """cond (B, C, H, W) → [s_i (B, c_i, H/2^i, W/2^i) for each level]; conv / Swin stages as the denoiser."""
    prev = [cfg.channels, *cfg.widths]
    stages = [_stage(i, prev[i], None, cfg, structure=True) for i in range(len(cfg.widths))]
    return PyramidEncoder2d(cfg.in_channels, cfg.channels, cfg.widths, stages)


class SPDiffDose(ConditionedDenoiser):
    """Denoiser ``model(x_t (B,1,H,W), t (B,), cond (B,C,H,W)) -> (B,1,H,W)``: ε, v or x0, as the diffusion config's
    ``prediction`` says (see module docstring)."""

    NAME = "sp-diffdose"

    def __init__(self, cfg: SPDiffDoseConfig):
        super().__init__()
        self.config = cfg
        widths, n, temb = cfg.widths, len(cfg.widths), 4 * cfg.channels
        self.time = TimestepEmbedding(cfg.channels, (temb,), cfg.fourier_scale, cfg.t_divisor)
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(temb, temb))
        self.structure = structure_encoder(cfg)
        self.head = nn.Conv2d(1, cfg.channels, kernel_size=3, padding=1)
        prev = [cfg.channels, *widths]
        self.enc = nn.ModuleList([_stage(i, prev[i], temb, cfg, structure=False) for i in range(n)])
        self.fusion = nn.ModuleList([FusionProjector(c, cfg.projector_ratio) for c in widths])
        self.down = nn.ModuleList([Downsample2d(c) for c in widths[:-1]])
        self.mid = SwinStage(widths[-1], widths[-1], temb, cfg.mid_depth, cfg)
        self.dec = nn.ModuleList([_stage(i, 2 * widths[i], temb, cfg, structure=False) for i in reversed(range(n))])
        self.up = nn.ModuleList([Upsample2d(widths[i], widths[i - 1]) for i in reversed(range(1, n))])
        self.output = nn.Sequential(group_norm(widths[0], cfg.norm_groups), nn.SiLU(),
                                    nn.Conv2d(widths[0], cfg.out_channels, kernel_size=3, padding=1))

    def size_multiple(self) -> int:  # noqa: D102
        return 2 ** (len(self.enc) - 1)

    def denoise(self, x_t: Tensor, t: Tensor, s: list[Tensor]) -> Tensor:
        """x_t: (B, 1, H, W), t: (B,) timesteps, s: :meth:`encode_condition` of the cond → (B, 1, H, W)."""
        n = len(self.enc)
        temb = self.time_mlp(self.time(t)[0])                                      # (B, 4·channels)
        h, skips = self.head(x_t), []
        for i in range(n):
            if i > 0:
                h = self.down[i - 1](h)
            h = self.fusion[i](self.enc[i](h, temb), s[i])                        # multi-scale fusion + projector
            skips.append(h)
        h = self.mid(h, temb)
        for k in range(n):
            h = self.dec[k](torch.cat([h, skips.pop()], dim=1), temb)
            if k < n - 1:
                h = self.up[k](h)
        return self.output(h)


PRESETS = {
    "paper": {"channels": 96, "channel_mults": (1, 2, 4, 8), "swin_levels": 2, "num_res_blocks": 1,
              "swin_depth": 2, "mid_depth": 2, "head_dim": 32, "window": 8, "se_depth": 2, "image_size": 128},
    "small": {"channels": 32, "channel_mults": (1, 2, 2, 4), "swin_levels": 2, "num_res_blocks": 1,
              "swin_depth": 2, "mid_depth": 2, "head_dim": 32, "window": 8, "se_depth": 1, "image_size": 128},
    "tiny": {"channels": 8, "channel_mults": (1, 2, 2), "swin_levels": 1, "num_res_blocks": 1, "swin_depth": 2,
             "mid_depth": 2, "head_dim": 8, "window": 4, "se_depth": 1, "image_size": 32},
}


@register_model("sp-diffdose", SPDiffDoseConfig, presets=PRESETS, kind="diffusion", dims=2,
                fidelity="reconstruction",
                source="Fu et al., SP-DiffDose (arXiv 2312.06187); architecture not published — our reconstruction",
                notes="U-Net with conv ResBlocks at the shallow levels and Swin blocks at the deeper ones; structure "
                      "encoder fused at every scale (concat + 1x1) then a Linear-GELU-Linear projector; "
                      "sized to 84.11 M")
def build_sp_diffdose(cfg: SPDiffDoseConfig) -> SPDiffDose:
    """Builder registered as ``"sp-diffdose"``."""
    return SPDiffDose(cfg)
