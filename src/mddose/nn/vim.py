"""Bidirectional Vision-Mamba (Vim) block and the 2D wrapper used by MD-Dose (Fig. 1d).

Design (Vim's "bimamba v2", which the MD-Dose code uses): ONE ``in_proj`` and ONE ``out_proj`` shared by
both directions; each direction has its own causal conv, x_proj, dt_proj, A and D (:class:`SSMBranch`).
The backward direction reads the flipped sequence, and both outputs are gated by the same ``z``::

    x, z = in_proj(LN(h))
    y    = scan_fwd(x, z) + flip(scan_bwd(flip(x), flip(z)))
    h    = h + out_proj(y)

Both directions run in a single ``selective_scan`` call (stacked along channels).
Sharing the projections costs ~6·C² parameters per block instead of ~12·C² for two full mixers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mddose.nn.mamba import MambaMixer, SSMBranch, resolve_dt_rank, scan_branches

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
        xz = self.in_proj(x).transpose(1, 2)                                      # (B, 2*d_inner, L)
        xs, z = xz.chunk(2, dim=1)
        xs_b, z_b = xs.flip(-1), z.flip(-1)
        y_f, y_b = scan_branches([self.ssm_fwd.prepare(xs), self.ssm_bwd.prepare(xs_b)], [z, z_b])
        return self.out_proj((y_f + y_b.flip(-1)).transpose(1, 2))


class BiMambaBlock(nn.Module):
    """Pre-norm residual Vim block: ``h + mixer(LN(h))`` with ``h: (B, L, C)``.

    ``bidirectional=False`` swaps in the one-way :class:`MambaMixer` (for ablations and tests).
    """

    def __init__(self, dim: int, bidirectional: bool = True, **mixer_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = (BiMambaMixer if bidirectional else MambaMixer)(dim, **mixer_kwargs)

    def forward(self, x: Tensor, hw: tuple[int, int] | None = None) -> Tensor:
        """x: (B, L, C) → (B, L, C); ``hw`` is ignored (kept for a common block signature)."""
        return x + self.mixer(self.norm(x))


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
