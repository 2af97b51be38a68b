"""Bidirectional Vision-Mamba (Vim) block and the 2D wrapper used by MD-Dose (Fig. 1d).

Design (Vim's "bimamba v2", which the MD-Dose code uses): ONE ``in_proj`` and ONE ``out_proj`` shared by
both directions; each direction has its own causal conv, x_proj, dt_proj, A and D (:class:`SSMBranch`).
The backward direction reads the flipped sequence, and both outputs are gated by the same ``z``::

    x, z = in_proj(LN(h))
    y    = scan_fwd(x, z) + flip(scan_bwd(flip(x), flip(z)))
    h    = h + out_proj(y)

Both directions run in a single scan call (stacked along channels), the backward one read in reverse in
place (:func:`mddose.nn.mamba.scan_directions`; ``$MDDOSE_MIXER_PATH=ref`` runs the flipped-copies twin).
Sharing the projections costs ~6·C² parameters per block instead of ~12·C² for two full mixers.

:class:`VisionMambaLayer2d` is the VisionMamba stage of MD-Dose's public code (LinjieFu-U/mamba_dose,
``vim/models_mamba.py``, after hustvl/Vim) without its patch-embedding conv: learned absolute position
embedding, rotary position embedding (:func:`rope_tables`) of the hidden state and the residual before every
block, RMSNorm, drop-path, a final RMSNorm, an unused classification head and Vim's initialisation
(:func:`vim_init_`). :class:`MambaLayer2d` is our leaner default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mddose.nn.mamba import MambaMixer, SSMBranch, resolve_dt_rank, run_mixer

#: Keyword arguments accepted by the mixers (forwarded from blocks and layers).
MIXER_KWARGS = ("d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor", "bias", "conv_bias")


class BiMambaMixer(nn.Module):
    """Bidirectional mixer (shared in/out projections, per-direction SSM). ``(B, L, C) -> (B, L, C)``."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, bias: bool = False, conv_bias: bool = True):
        super().__init__()
        self.d_model, self.d_inner = d_model, int(expand * d_model)
        rank = resolve_dt_rank(dt_rank, d_model)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.ssm_fwd = SSMBranch(self.d_inner, d_state, d_conv, rank, dt_min, dt_max, dt_init_floor, conv_bias)
        self.ssm_bwd = SSMBranch(self.d_inner, d_state, d_conv, rank, dt_min, dt_max, dt_init_floor, conv_bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, C) → (B, L, C)."""
        return run_mixer(self.in_proj, self.out_proj, [self.ssm_fwd, self.ssm_bwd], x, (False, True))


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis (Mamba's / Vim's RMSNorm): ``x / sqrt(mean(x²) + eps) * weight``.

    Weight only, no bias. ``(..., dim) -> (..., dim)``.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight


class DropPath(nn.Module):
    """Stochastic depth on a residual branch ``(B, ...)``: in training, each sample's branch is zeroed with
    probability ``p`` and the kept ones scaled by ``1 / (1 - p)``; the identity in eval mode or for ``p = 0``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:  # noqa: D102
        return f"p={self.p}"


class BiMambaBlock(nn.Module):
    """Pre-norm residual Vim block: ``h + drop_path(mixer(norm(h)))`` with ``h: (B, L, C)``.

    ``bidirectional=False`` swaps in the one-way :class:`MambaMixer` (for ablations and tests).
    ``norm``: ``"layer"`` (LayerNorm, default) or ``"rms"`` (:class:`RMSNorm`, eps 1e-5, as Vim);
    ``drop_path``: stochastic-depth probability of the mixer branch (0 = none, the default).
    """

    def __init__(self, dim: int, bidirectional: bool = True, *, norm: str = "layer", drop_path: float = 0.0,
                 **mixer_kwargs):
        super().__init__()
        if norm not in ("layer", "rms"):
            raise ValueError(f"norm must be 'layer' or 'rms', got {norm!r}")
        self.norm = nn.LayerNorm(dim) if norm == "layer" else RMSNorm(dim)
        self.mixer = (BiMambaMixer if bidirectional else MambaMixer)(dim, **mixer_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, hw: tuple[int, int] | None = None) -> Tensor:
        """x: (B, L, C) → (B, L, C); ``hw`` is ignored (kept for a common block signature)."""
        return x + self.drop_path(self.mixer(self.norm(x)))


def _make_block(dim: int, scan: str, mixer_kwargs: dict) -> nn.Module:
    if scan == "bi":
        return BiMambaBlock(dim, **mixer_kwargs)
    if scan == "cross":
        from mddose.nn.ss2d import SS2DBlock

        return SS2DBlock(dim, **mixer_kwargs)
    raise ValueError(f"scan must be 'bi' or 'cross', got {scan!r}")


class MambaLayer2d(nn.Module):
    """``depth`` Mamba blocks over the pixels of a feature map, then a final LayerNorm (Vim's ``norm_f``).

    ``forward(x: (B, C, H, W)) -> (B, C, H, W)``: tokens in row-major order, ``(B, H*W, C)``.
    ``depth=0`` is the identity. ``scan``: ``"bi"`` (Vim bidirectional) or ``"cross"`` (VMamba SS2D).
    The output projections are rescaled by ``1/sqrt(depth)`` (GPT-2 / Mamba residual init).
    """

    def __init__(self, dim: int, depth: int, scan: str = "bi", **mixer_kwargs):
        super().__init__()
        unknown = set(mixer_kwargs) - set(MIXER_KWARGS)
        if unknown:
            raise TypeError(f"MambaLayer2d: unexpected argument(s) {sorted(unknown)}")
        self.dim, self.depth = dim, depth
        self.blocks = nn.ModuleList([_make_block(dim, scan, mixer_kwargs) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim) if depth > 0 else nn.Identity()
        if depth > 1:
            with torch.no_grad():
                for block in self.blocks:
                    block.mixer.out_proj.weight.div_(math.sqrt(depth))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → (B, C, H, W)."""
        if self.depth == 0:
            return x
        b, c, h, w = x.shape
        if c != self.dim:
            raise ValueError(f"MambaLayer2d: expected {self.dim} channels, got {c}")
        tokens = x.flatten(2).transpose(1, 2)                                     # (B, H*W, C)
        for block in self.blocks:
            tokens = block(tokens, (h, w))
        return self.norm(tokens).transpose(1, 2).reshape(b, c, h, w)


# ------------------------------------------------------------------- the public code's VisionMamba stage
def rope_tables(dim: int, h: int, w: int, *, ref_len: float = 14.0, theta: float = 10000.0,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Cosine and sine tables ``(h*w, dim)`` of Vim's 2D rotary position embedding (EVA-02's
    ``VisionRotaryEmbeddingFast``) for an ``h x w`` grid of tokens in row-major order.

    The first ``dim/2`` channels turn with the row index, the last ``dim/2`` with the column index; channel pairs
    ``(2k, 2k+1)`` of each half share the frequency ``theta^(-4k/dim)``. Index ``i`` of ``n`` sits at
    ``i / n * ref_len`` (Vim: pretraining grid 14), so every grid spans the same range of angles — which also
    defines the tables for grids other than the training one. ``dim`` must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"rotary embedding needs channels divisible by 4, got {dim}")
    half = dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, half, 2, device=device)[: half // 2].float() / half)   # (dim/4,)

    def axis(n: int) -> Tensor:                                                   # (n, dim/2), pairs repeated
        pos = torch.arange(n, device=device, dtype=torch.float32) / n * ref_len
        return torch.outer(pos, freqs).repeat_interleave(2, dim=-1)

    rows, cols = axis(h), axis(w)
    angles = torch.cat([rows[:, None, :].expand(h, w, half), cols[None, :, :].expand(h, w, half)], dim=-1)
    angles = angles.reshape(h * w, dim)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each channel pair ``(2k, 2k+1)`` of ``x: (B, L, C)`` by the angles of ``cos, sin: (L, C)``."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


def vim_drop_path_rates(depth: int, rate: float) -> list[float]:
    """Drop-path probability of each block's mixer output in a VisionMamba stage of ``depth`` blocks.

    Vim drops block ``i``'s output with ``linspace(0, rate, depth)[i]`` (applied in block ``i+1``, or to the
    last output before the final norm with ``rate`` itself): ``rate * i / (depth - 1)``, and ``rate`` for the
    last block (also when ``depth`` is 1).
    """
    return [rate * i / (depth - 1) if i < depth - 1 else rate for i in range(depth)]


def vim_init_(stage: nn.Module, depth: int) -> None:
    """Vim's initialisation of a VisionMamba stage, in place: every ``nn.Linear`` weight ~ trunc-normal(0, 0.02)
    and every bias 0 — ``dt_proj``'s included, so ``softplus(dt)`` starts at ``log 2`` for every channel instead
    of mamba-ssm's log-uniform [dt_min, dt_max] — and ``pos_embed`` ~ trunc-normal(0, 0.02); then each mixer's
    ``out_proj`` weight is redrawn as PyTorch's Linear default (kaiming-uniform, a = sqrt 5) divided by
    ``sqrt(depth)``. Convolutions, RMSNorm weights, ``A_log`` and ``D`` keep their values."""
    for module in stage.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    if isinstance(getattr(stage, "pos_embed", None), nn.Parameter):
        nn.init.trunc_normal_(stage.pos_embed, std=0.02)
    for module in stage.modules():
        if isinstance(module, (BiMambaMixer, MambaMixer)):
            nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                module.out_proj.weight.div_(math.sqrt(depth))


class VisionMambaLayer2d(nn.Module):
    """The VisionMamba stage of MD-Dose's public code, after its patch-embedding conv.

    ``forward(x: (B, C, H, W)) -> (B, C, H, W)``, tokens ``(B, H*W, C)`` in row-major order::

        h = tokens + pos_embed                        # learned, (1, grid*grid, C)
        for each block i:  h = rope(h);  h = h + drop_path_i(mixer_i(RMSNorm_i(h)))
        out = RMSNorm(h)

    This is Vim's loop (``hidden_states``/``residual`` both rotated before every block, the residual summed
    in the next block) written in pre-norm form; rotation and per-sample drop-path are linear, so the two
    agree. ``drop_path``: the stage's rate (Vim's ``drop_path_rate``, 0.1), spread by
    :func:`vim_drop_path_rates`; active in training only. Mixers: :class:`BiMambaMixer` ("bimamba v2").

    ``grid``: side of the token grid the position embedding is learned for (the stage's grid at the
    training image size). Other grids get the embedding resized bicubically (as Vim does to fine-tune at
    another resolution) and their own rotary tables; the public code accepts only ``grid``.

    ``num_classes``: size of the classification ``head`` Linear every VisionMamba carries (1000); it never
    reaches the output and is kept only so that the parameter count is the authors'. It is frozen
    (``requires_grad`` False): the authors' optimizer never updates it either, as it gets no gradient.
    ``depth = 0`` keeps the position embedding and the final norm (a VisionMamba without blocks).
    Initialisation: :func:`vim_init_`.
    """

    def __init__(self, dim: int, depth: int, grid: int, *, drop_path: float = 0.1, num_classes: int = 1000,
                 **mixer_kwargs):
        super().__init__()
        unknown = set(mixer_kwargs) - set(MIXER_KWARGS)
        if unknown:
            raise TypeError(f"VisionMambaLayer2d: unexpected argument(s) {sorted(unknown)}")
        if dim % 4 or grid < 1 or depth < 0:
            raise ValueError(f"VisionMambaLayer2d: need dim divisible by 4, grid >= 1, depth >= 0; "
                             f"got dim={dim}, grid={grid}, depth={depth}")
        self.dim, self.depth, self.grid = dim, depth, grid
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, dim))
        self.blocks = nn.ModuleList([BiMambaBlock(dim, norm="rms", drop_path=p, **mixer_kwargs)
                                     for p in vim_drop_path_rates(depth, drop_path)])
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else None
        vim_init_(self, depth)
        if self.head is not None:
            self.head.requires_grad_(False)

    def position_embedding(self, h: int, w: int) -> Tensor:
        """The learned embedding for an ``h x w`` token grid: ``(1, h*w, dim)`` (resized if not the grid)."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        grid = self.pos_embed.transpose(1, 2).reshape(1, self.dim, self.grid, self.grid)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → (B, C, H, W)."""
        b, c, h, w = x.shape
        if c != self.dim:
            raise ValueError(f"VisionMambaLayer2d: expected {self.dim} channels, got {c}")
        tokens = x.flatten(2).transpose(1, 2) + self.position_embedding(h, w)      # (B, H*W, C)
        if self.blocks:
            cos, sin = rope_tables(c, h, w, device=x.device)
            cos, sin = cos.to(tokens.dtype), sin.to(tokens.dtype)
            for block in self.blocks:
                tokens = block(apply_rope(tokens, cos, sin))
        return self.norm(tokens).transpose(1, 2).reshape(b, c, h, w)
