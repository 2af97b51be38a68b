"""MD-Dose noise predictor (Fu et al. 2024, Fig. 1b-d): a Mamba UNet plus a Mamba structure encoder.

Layout for ``n = len(dims)`` levels (paper: n = 4, dims 48/96/192/384, input 128x128 in the public code)::

    head      3x3 conv  x_t (B,1,H,W) -> dims[0]//2 channels                       at H
    encoder   level i:  PatchEmbed2d(stride 2) -> dims[i]; MambaLayer2d(enc_depths[i])   at H/2^(i+1)
              + structure-encoder output of level i (same form, run on cond) + time embedding
    decoder   level k (k = 0 .. n-1, deepest first): PixelShuffle x2 of the previous output to the
              skip's channels, concat the skip, 1x1 conv to the level's channels, MambaLayer2d(dec_depths[k]),
              + time embedding. Skips: encoder levels n-2 .. 0, then the head output (full resolution).
              Level channels: dims[n-2], ..., dims[0], dims[0].
    output    3x3 conv dims[0] -> out_channels                                     at H

``structure_encoder="none"`` (the ablation without SE) concatenates cond to x_t at the head instead.

Parameters (in_channels 9): paper preset 28.18 M vs 30.47 M reported (Table 2, -7.5 %). The network
follows the authors' public code (LinjieFu-U/mamba_dose, ``vim/mamba_struc_unet.py``: Vim "bimamba v2"
mixers, expand 2, d_state 16, 4/6/6/8 encoder and 6/6/4/4 decoder blocks, a structure encoder with the
same depths, pixel-shuffle upsampling, 1x1 reductions, per-level time projections). By default
(``variant="mddose"``) left out, because they tie the network to one image size or are never used:
  * learned absolute position embeddings of every VisionMamba stage (1.87 M at 128x128 input);
  * the unused 1000-class ``head`` Linear of every VisionMamba stage (1.84 M);
  * a redundant 1x1 patch-embedding conv in every decoder stage (0.05 M), an unused time projection (0.04 M);
  * RoPE (parameter-free) and drop-path 0.1.
Other default choices: LayerNorm instead of RMSNorm; mamba-ssm's initialisation (PyTorch's Linear init,
log-uniform dt bias) instead of Vim's; a channel LayerNorm after each patch embedding; a bias on the output
conv; timesteps divided by ``t_divisor`` (1000) before the Fourier features (the public code feeds raw integer
steps, which gives unrelated embeddings to neighbouring steps — ``t_divisor=1`` restores that, in either variant).

``variant="official"`` puts all of that back, as the public code builds it: every Mamba stage (noise encoder,
structure encoder, decoder) is a :class:`~mddose.nn.vim.VisionMambaLayer2d` (learned position embedding,
RoPE of hidden state and residual before every block, RMSNorm, drop-path 0.1 in training, unused 1000-class
head, Vim's init: trunc-normal(0.02) Linears, zero biases — ``dt_proj``'s too); patch embeddings without norm;
in each decoder level the stage's own 1x1 patch-embedding conv (with bias) after the 1x1 reduction (at full
resolution it replaces the reduction, as there); the unused time projection; no output-conv bias; the
Fourier frequencies a frozen parameter. Parameters never used (heads, that time projection) and the
frequencies are frozen (``requires_grad`` False; the authors' optimizer never changes them either), but
counted. Count, paper preset: 31,949,136 with in_channels 5 — exactly the authors' model (its default
``inp_struc_channels=5``: CT, PTV and heart, lungs, cord as in the paper; their script prints that / 1024²
= 30.47 "M", Table 2) — and 31,950,000 with in_channels 9 (the structure head conv has 216 more weights per
channel). The position embeddings are learned for ``image_size``; other slice sizes (divisible by
2^len(dims)) resize them bicubically (the public code refuses them). Needs ``scan="bi"``, a Mamba structure
encoder or none, and dims divisible by 4 (rotary pairs per axis).

Structure-encoder ablation (Table 3). Only the Mamba SE is in the paper and the public code; how Conv-SE and
Trans-SE were built is not published. Our reading: the same stage layout and injection as the Mamba SE (head
3x3 conv to dims[0]//2, per level PatchEmbed2d stride 2 then ``enc_depths[i]`` blocks and a channel LayerNorm
— the counterpart of MambaLayer2d's final norm — each level's output added to the noise encoder's stage
output), with the Mamba blocks replaced by
  * ``"conv"`` (Conv-SE): ResBlock2d without time embedding (GroupNorm -> SiLU -> 3x3 conv, twice, identity skip);
  * ``"transformer"`` (Trans-SE): Swin blocks (SwinLayer2d: window ``se_window`` = 8, shifts 0 / 4 alternating,
    relative position bias, MLP ratio 4), ``max(1, dims[i] // se_head_dim)`` heads = 3/6/12/24 with the paper
    dims (Swin-T's head counts, 16 channels per head).
Parameters with the paper preset (in_channels 9), structure encoder / whole network:
  mamba 11,030,208 / 28,176,961 · conv 26,803,392 / 43,950,145 · transformer 18,116,472 / 35,263,225 ·
  none (cond concatenated to x_t) 0 / 17,148,697.
The conv blocks (two 3x3 convs, 18·C² weights) are heavier than a Mamba block (~6·C²) and a Swin block (~12·C²);
we kept the depths equal rather than the parameter counts, as the paper's "replace the blocks" suggests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mddose.errors import MddoseError
from mddose.utils.config import check_int_fields
from mddose.models.denoiser import ConditionedDenoiser
from mddose.models.registry import ModelConfig, register_model
from mddose.nn.embed import LayerNorm2d, PatchEmbed2d, PixelShuffleUpsample, TimestepEmbedding
from mddose.nn.swin import SwinLayer2d
from mddose.nn.unet2d import ResBlock2d
from mddose.nn.vim import MambaLayer2d, VisionMambaLayer2d

STRUCTURE_ENCODERS = ("mamba", "none", "conv", "transformer")
SCANS = ("bi", "cross")
VARIANTS = ("mddose", "official")


@dataclass(frozen=True)
class MDDoseConfig(ModelConfig):
    """Hyper-parameters of the MD-Dose noise predictor (defaults = the paper's network).

    in_channels: structure channels C = 2 + O (CT, PTV, O organs at risk).
    dims / enc_depths / dec_depths: channels and Mamba blocks per level (dec_depths deepest first).
    d_state / expand / d_conv: Mamba mixer sizes. fourier_scale: std of the timestep Fourier frequencies.
    t_divisor: timesteps are divided by this before the Fourier features (1.0 = the public code's raw steps).
    structure_encoder: "mamba" (paper) | "none" (cond concatenated to x_t) | "conv" (Conv-SE) | "transformer"
        (Trans-SE); see the module docstring.
    se_window / se_head_dim: Swin window side and channels per attention head of the Trans-SE (heads per level =
        max(1, dims[i] // se_head_dim); unused by the other structure encoders).
    scan: "bi" (Vim bidirectional, paper) | "cross" (VMamba four-direction SS2D).
    image_size: the training slice size. "mddose": informational; any H, W divisible by 2^len(dims) works.
        "official": the grid of the learned position embeddings (other sizes resize them).
    variant: "mddose" (default: our network) | "official" (the public code's Vision-Mamba details, see the
        module docstring).
    """

    in_channels: int = 9
    out_channels: int = 1
    dims: tuple[int, ...] = (48, 96, 192, 384)
    enc_depths: tuple[int, ...] = (4, 6, 6, 8)
    dec_depths: tuple[int, ...] = (6, 6, 4, 4)
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    fourier_scale: float = 30.0
    t_divisor: float = 1000.0
    structure_encoder: str = "mamba"
    scan: str = "bi"
    image_size: int = 128
    se_window: int = 8
    se_head_dim: int = 16
    variant: str = "mddose"

    def __post_init__(self):
        where = "md-dose config"
        for name in ("dims", "enc_depths", "dec_depths"):
            v = getattr(self, name)
            if not isinstance(v, (tuple, list)) or not all(isinstance(x, int) for x in v):
                raise MddoseError(f"{where}: {name} must be a list of integers, got {v!r}")
            object.__setattr__(self, name, tuple(v))
        check_int_fields(where, self, ("in_channels", "out_channels", "d_state", "expand", "d_conv", "se_window",
                                       "se_head_dim"), minimum=None)
        n = len(self.dims)
        if n < 1 or any(d < 2 or d % 2 for d in self.dims):
            raise MddoseError(f"{where}: dims must be a non-empty list of even channel counts, got {self.dims}")
        for name in ("enc_depths", "dec_depths"):
            v = getattr(self, name)
            if len(v) != n or any(d < 0 for d in v):
                raise MddoseError(f"{where}: {name} must hold {n} non-negative depths (one per level), got {v}")
        for name in ("in_channels", "out_channels", "d_state", "expand", "d_conv", "se_window", "se_head_dim"):
            if getattr(self, name) < 1:
                raise MddoseError(f"{where}: {name} must be >= 1, got {getattr(self, name)}")
        if self.structure_encoder not in STRUCTURE_ENCODERS:
            raise MddoseError(f"{where}: structure_encoder must be one of {', '.join(STRUCTURE_ENCODERS)}, "
                              f"got {self.structure_encoder!r}")
        if self.scan not in SCANS:
            raise MddoseError(f"{where}: scan must be 'bi' or 'cross', got {self.scan!r}")
        if self.t_divisor <= 0 or self.fourier_scale <= 0:
            raise MddoseError(f"{where}: t_divisor and fourier_scale must be > 0")
        if self.structure_encoder == "transformer" and any(d % h for d, h in zip(self.dims, self.se_heads)):
            raise MddoseError(f"{where}: Trans-SE heads {self.se_heads} (dims // se_head_dim) must divide dims "
                              f"{self.dims}; change se_head_dim")
        if self.variant not in VARIANTS:
            raise MddoseError(f"{where}: variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.official:
            self._check_official(where, n)

    def _check_official(self, where: str, n: int) -> None:
        if self.scan != "bi" or self.structure_encoder not in ("mamba", "none"):
            raise MddoseError(f"{where}: variant 'official' (the public code's Vision Mamba) needs scan 'bi' and "
                              f"structure_encoder 'mamba' or 'none', got {self.scan!r} / {self.structure_encoder!r}")
        if any(d % 4 for d in self.dims):
            raise MddoseError(f"{where}: variant 'official' needs dims divisible by 4 (rotary embedding), "
                              f"got {self.dims}")
        mult = 2 ** n
        if not isinstance(self.image_size, int) or self.image_size < mult or self.image_size % mult:
            raise MddoseError(f"{where}: variant 'official' learns position embeddings for image_size, which must "
                              f"be a multiple of {mult} (2^levels), got {self.image_size!r}")

    @property
    def official(self) -> bool:
        """True for ``variant="official"`` (the public code's Vision-Mamba details)."""
        return self.variant == "official"

    @property
    def se_heads(self) -> tuple[int, ...]:
        """Attention heads per level of the Trans-SE."""
        return tuple(max(1, d // self.se_head_dim) for d in self.dims)

    @property
    def mixer_kwargs(self) -> dict:
        return {"d_state": self.d_state, "expand": self.expand, "d_conv": self.d_conv}


def _stage_layer(kind: str, level: int, cfg: MDDoseConfig) -> nn.Module:
    """The blocks of one encoder level: ``(B, dims[level], h, w) -> (B, dims[level], h, w)``."""
    dim, depth = cfg.dims[level], cfg.enc_depths[level]
    if kind == "mamba" and cfg.official:
        return VisionMambaLayer2d(dim, depth, cfg.image_size // 2 ** (level + 1), **cfg.mixer_kwargs)
    if kind == "mamba":
        return MambaLayer2d(dim, depth, cfg.scan, **cfg.mixer_kwargs)
    if depth == 0:
        return nn.Identity()
    if kind == "conv":
        blocks = [ResBlock2d(dim, dim) for _ in range(depth)]
    else:
        blocks = [SwinLayer2d(dim, depth, cfg.se_heads[level], cfg.se_window)]
    return nn.Sequential(*blocks, LayerNorm2d(dim))      # final LayerNorm, as MambaLayer2d's norm_f


class MambaEncoder(nn.Module):
    """Head conv + ``len(dims)`` down-sampling stages. Used for x_t and (same form) for the structure.

    ``kind`` chooses the blocks of every stage: "mamba" (MambaLayer2d; VisionMambaLayer2d in the official
    variant, whose patch embeddings have no norm), "conv" (ResBlock2d x depth + LayerNorm2d) or "transformer"
    (SwinLayer2d(depth) + LayerNorm2d). ``forward`` is split so the noise encoder can add structure features
    between stages.
    """

    def __init__(self, in_ch: int, cfg: MDDoseConfig, kind: str = "mamba"):
        super().__init__()
        head_ch = cfg.dims[0] // 2
        self.head = nn.Conv2d(in_ch, head_ch, kernel_size=3, padding=1)
        chans = (head_ch, *cfg.dims)
        self.down = nn.ModuleList([PatchEmbed2d(chans[i], chans[i + 1], 2, norm=not cfg.official)
                                   for i in range(len(cfg.dims))])
        self.layers = nn.ModuleList([_stage_layer(kind, i, cfg) for i in range(len(cfg.dims))])

    def stage(self, i: int, x: Tensor) -> Tensor:
        """Level ``i``: (B, C_{i-1}, h, w) → (B, dims[i], h/2, w/2)."""
        return self.layers[i](self.down[i](x))

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (B, in_ch, H, W) → [head (B, dims[0]/2, H, W), level 0, ..., level n-1]."""
        feats = [self.head(x)]
        for i in range(len(self.layers)):
            feats.append(self.stage(i, feats[-1]))
        return feats


class MDDose(ConditionedDenoiser):
    """Denoiser ``model(x_t (B,1,H,W), t (B,), cond (B,C,H,W)) -> (B,1,H,W)``: ε, v or x0, as the diffusion config's
    ``prediction`` says."""

    NAME = "md-dose"

    def __init__(self, cfg: MDDoseConfig):
        super().__init__()
        self.config = cfg
        n, dims = len(cfg.dims), cfg.dims
        self.levels = n
        concat = cfg.structure_encoder == "none"
        self.encoder = MambaEncoder(1 + (cfg.in_channels if concat else 0), cfg)
        self.structure = None if concat else MambaEncoder(cfg.in_channels, cfg, cfg.structure_encoder)
        # decoder level k: skip = encoder level n-2-k (head for the last), channels as the skip's level
        skip_ch = [dims[n - 2 - k] if k < n - 1 else dims[0] // 2 for k in range(n)]
        out_ch = [dims[n - 2 - k] if k < n - 1 else dims[0] for k in range(n)]
        in_ch = [dims[n - 1], *out_ch[:-1]]
        self.up = nn.ModuleList([PixelShuffleUpsample(in_ch[k], skip_ch[k]) for k in range(n)])
        if cfg.official:
            self._build_official_decoder(cfg, skip_ch, out_ch)
        else:
            self.reduce = nn.ModuleList([nn.Conv2d(2 * skip_ch[k], out_ch[k], kernel_size=1, bias=False)
                                         for k in range(n)])
            self.dec_layers = nn.ModuleList([MambaLayer2d(out_ch[k], cfg.dec_depths[k], cfg.scan,
                                                          **cfg.mixer_kwargs) for k in range(n)])
        self.time = TimestepEmbedding(2 * dims[0], (*dims, *out_ch), cfg.fourier_scale, cfg.t_divisor,
                                      frozen_parameter=cfg.official)
        if cfg.official:   # the public code's projection for a (commented-out) middle block: never used
            self.time_unused = nn.Sequential(nn.SiLU(), nn.Linear(2 * dims[0], dims[-1])).requires_grad_(False)
        self.output = nn.Conv2d(dims[0], cfg.out_channels, kernel_size=3, padding=1, bias=not cfg.official)

    def _build_official_decoder(self, cfg: MDDoseConfig, skip_ch: list[int], out_ch: list[int]) -> None:
        """Decoder level k of the public code: 1x1 reduction (none at full resolution), then the VisionMamba
        stage's 1x1 patch-embedding conv (with bias) and the stage at its own grid."""
        n = self.levels
        self.reduce = nn.ModuleList([
            nn.Sequential(nn.Conv2d(2 * skip_ch[k], out_ch[k], kernel_size=1, bias=False),
                          PatchEmbed2d(out_ch[k], out_ch[k], 1, norm=False)) if k < n - 1
            else PatchEmbed2d(2 * skip_ch[k], out_ch[k], 1, norm=False) for k in range(n)])
        self.dec_layers = nn.ModuleList([
            VisionMambaLayer2d(out_ch[k], cfg.dec_depths[k], cfg.image_size // 2 ** (n - 1 - k), **cfg.mixer_kwargs)
            for k in range(n)])

    def size_multiple(self) -> int:  # noqa: D102
        return 2 ** self.levels

    def encode_condition(self, cond: Tensor) -> list[Tensor]:
        """What the noise branch needs of ``cond (B, C, H, W)``, independent of x_t and t — so a sampler can
        compute it once per slice batch: the structure encoder's level outputs
        ``[(B, dims[i], H/2^(i+1), W/2^(i+1)) for each level]``, or ``[cond]`` without a structure encoder."""
        if self.structure is None:
            return [cond]
        s, feats = self.structure.head(cond), []
        for i in range(self.levels):
            s = self.structure.stage(i, s)
            feats.append(s)
        return feats

    def denoise(self, x_t: Tensor, t: Tensor, features: list[Tensor]) -> Tensor:
        """x_t: (B, 1, H, W), t: (B,) timesteps, features: :meth:`encode_condition` of the cond → (B, 1, H, W)."""
        n = self.levels
        temb = [e[:, :, None, None] for e in self.time(t)]                       # 2n × (B, C_l, 1, 1)
        enc = self.encoder
        x = enc.head(torch.cat([x_t, features[0]], 1) if self.structure is None else x_t)
        skips = [x]
        for i in range(n):
            x = enc.stage(i, x)
            if self.structure is not None:
                x = x + features[i]
            x = x + temb[i]
            skips.append(x)
        for k in range(n):
            skip = skips[n - 1 - k]
            x = self.reduce[k](torch.cat([self.up[k](x), skip], 1))
            x = self.dec_layers[k](x) + temb[n + k]
        return self.output(x)


_PAPER = {"dims": (48, 96, 192, 384), "enc_depths": (4, 6, 6, 8), "dec_depths": (6, 6, 4, 4), "image_size": 128}
PRESETS = {
    "paper": _PAPER,
    # CPU-sized: narrow, one block per level, no Mamba at full resolution (the 1/1 level is 16k tokens at 128²).
    "small": {"dims": (32, 64, 96, 128), "enc_depths": (1, 1, 1, 1), "dec_depths": (1, 1, 1, 0),
              "image_size": 128},
    "tiny": {"dims": (8, 16, 24, 32), "enc_depths": (1, 1, 1, 1), "dec_depths": (1, 1, 1, 1), "d_state": 4,
             "se_window": 4, "image_size": 32},
}


@register_model("md-dose", MDDoseConfig, presets=PRESETS, kind="diffusion", dims=2, fidelity="paper",
                source="Fu et al. 2024, MD-Dose (paper, Sec. 2) and the authors' code LinjieFu-U/mamba_dose",
                choices={"structure_encoder": STRUCTURE_ENCODERS, "variant": VARIANTS})
def build_md_dose(cfg: MDDoseConfig) -> MDDose:
    """Builder registered as ``"md-dose"``."""
    return MDDose(cfg)
