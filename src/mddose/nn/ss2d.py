"""VMamba's SS2D: 2D selective scan along four directions ("cross-scan"), merged by summation.

For a feature map the four token orders are row-major, column-major and their reverses. Following
VMamba (Liu et al. 2024)::

    x, z = in_proj(h)                                # (B, H, W, d_inner) each
    x    = silu(depthwise_conv2d_3x3(x))             # shared 2D conv replaces the causal 1D conv
    y_k  = scan_k(order_k(x))            k = 1..4    # own x_proj, dt_proj, A, D per direction (no gate)
    y    = sum_k unorder_k(y_k)
    out  = out_proj(LN(y) * silu(z))

All four directions run in a single ``selective_scan`` call.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mddose.nn.mamba import SSMBranch, resolve_dt_rank, scan_branches


def cross_scan(x: Tensor, h: int, w: int) -> list[Tensor]:
    """x: (B, D, H*W) row-major → the 4 sequences [row, col, row reversed, col reversed], each (B, D, L)."""
    col = x.reshape(x.shape[0], x.shape[1], h, w).transpose(2, 3).reshape(x.shape[0], x.shape[1], h * w)
    return [x, col, x.flip(-1), col.flip(-1)]


def cross_merge(ys: list[Tensor], h: int, w: int) -> Tensor:
    """Inverse of :func:`cross_scan`, summed: 4 × (B, D, L) → (B, D, H*W) row-major."""
    b, d, _ = ys[0].shape

    def from_col(t: Tensor) -> Tensor:
        return t.reshape(b, d, w, h).transpose(2, 3).reshape(b, d, h * w)

    return ys[0] + from_col(ys[1]) + ys[2].flip(-1) + from_col(ys[3].flip(-1))


class SS2D(nn.Module):
    """Four-direction 2D selective scan. ``forward(x: (B, L=H*W, C), hw=(H, W)) -> (B, L, C)``."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, bias: bool = False, conv_bias: bool = True):
        super().__init__()
        self.d_model, self.d_inner = d_model, int(expand * d_model)
        rank = resolve_dt_rank(dt_rank, d_model)
        k = d_conv if d_conv % 2 == 1 else d_conv - 1                             # odd kernel for 'same' padding
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv2d = nn.Conv2d(self.d_inner, self.d_inner, k, padding=k // 2, groups=self.d_inner, bias=conv_bias)
        self.branches = nn.ModuleList(
            [SSMBranch(self.d_inner, d_state, 0, rank, dt_min, dt_max, dt_init_floor) for _ in range(4)])
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """x: (B, H*W, C) row-major tokens → (B, H*W, C)."""
        b, seqlen, _ = x.shape
        h, w = hw
        if h * w != seqlen:
            raise ValueError(f"SS2D: hw={hw} does not match sequence length {seqlen}")
        xs, z = self.in_proj(x).chunk(2, dim=-1)                                  # (B, L, d_inner)
        xs = xs.transpose(1, 2).reshape(b, self.d_inner, h, w)
        xs = F.silu(self.conv2d(xs)).reshape(b, self.d_inner, seqlen)
        seqs = cross_scan(xs, h, w)
        ys = scan_branches([br.prepare(s) for br, s in zip(self.branches, seqs)])
        y = cross_merge(ys, h, w).transpose(1, 2)                                 # (B, L, d_inner)
        return self.out_proj(self.out_norm(y) * F.silu(z))


class SS2DBlock(nn.Module):
    """Pre-norm residual block ``h + SS2D(LN(h))`` on tokens ``(B, H*W, C)``."""

    def __init__(self, dim: int, **mixer_kwargs):
        super().__init__()
        mixer_kwargs.setdefault("d_conv", 3)
        self.norm = nn.LayerNorm(dim)
        self.mixer = SS2D(dim, **mixer_kwargs)

    def forward(self, x: Tensor, hw: tuple[int, int] | None = None) -> Tensor:
        """x: (B, H*W, C); hw=(H, W) is required."""
        if hw is None:
            raise ValueError("SS2DBlock needs the feature-map size hw=(H, W)")
        return x + self.mixer(self.norm(x), hw)


__all__ = ["SS2D", "SS2DBlock", "cross_merge", "cross_scan"]
