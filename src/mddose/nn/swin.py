"""Shifted-window (Swin) transformer blocks on ``(B, C, H, W)`` feature maps (Liu et al., ICCV 2021).

Block (pre-norm, MLP ratio 4)::

    x = x + unshift(W-MSA(shift(pad(LN(x)))))[:H, :W]      # attention inside window x window patches
    x = x + MLP(LN(x))                                      # Linear(C, 4C) -> GELU -> Linear(4C, C)

* W-MSA: multi-head self-attention within each window, plus a learned relative position bias
  (a ``(2w-1)^2 x heads`` table indexed by the relative offset of query and key).
* Shifted windows (``shift > 0``): the map is rolled by ``-shift`` along H and W before the window split and
  rolled back after. Windows at the bottom/right edges then hold pixels from opposite sides of the image; an
  additive mask (-inf) confines attention to pixels that were neighbours before the roll, as in Swin.
* Sizes: any H, W. When a side is not a multiple of the window the (normalised) map is zero-padded at the
  bottom/right; padded pixels are masked out as keys, and they are cropped from the output, so they never
  influence a real pixel. A side that fits in one window is not shifted (nothing to shift across).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` → (B, nW, window², C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B, nW, window², C) → (B, H, W, C)."""
    b, _, _, c = windows.shape
    x = windows.view(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def _region_labels(size: int, window: int, shift: int, device) -> Tensor:
    """Per row (or column) of the rolled, padded map: which of Swin's three shift regions it belongs to."""
    labels = torch.zeros(size, dtype=torch.long, device=device)
    if shift:
        labels[size - window:size - shift] = 1
        labels[size - shift:] = 2
    return labels


def window_attention_mask(hp: int, wp: int, h: int, w: int, window: int, shift_h: int, shift_w: int,
                          device=None) -> Tensor | None:
    """Additive attention mask of the windows of a padded (hp x wp, real h x w) map rolled by (-shift_h, -shift_w).

    Returns ``(nW, window², window²)`` with 0 where a query may attend a key and -inf where not (different
    shift regions, or a padded key for a real query), or None when nothing is masked.
    """
    if not (shift_h or shift_w or hp != h or wp != w):
        return None
    rows = _region_labels(hp, window, shift_h, device)
    cols = _region_labels(wp, window, shift_w, device)
    region = rows[:, None] * 3 + cols[None, :]                                   # (hp, wp), rolled frame
    pad = torch.ones(hp, wp, dtype=torch.long, device=device)
    pad[:h, :w] = 0
    pad = torch.roll(pad, (-shift_h, -shift_w), (0, 1))                         # padding, in the rolled frame
    labels = window_partition((region * 2 + pad)[None, :, :, None], window)[0, :, :, 0]   # (nW, N)
    blocked = labels[:, :, None] != labels[:, None, :]
    return torch.zeros(blocked.shape, device=device).masked_fill(blocked, float("-inf"))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.

    ``forward(x: (B, nW, N, C), mask: (nW, N, N) | None) -> (B, nW, N, C)`` with ``N = window²``.
    """

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :] + (window - 1)             # (2, N, N), in [0, 2w-2]
        self.register_buffer("bias_index", rel[0] * (2 * window - 1) + rel[1], persistent=False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, nW, N, C), mask: (nW, N, N) additive or None → (B, nW, N, C)."""
        b, nw, n, c = x.shape
        qkv = self.qkv(x).view(b, nw, n, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.unbind(0)                                                  # each (B, nW, heads, N, d)
        bias = self.bias_table[self.bias_index].permute(2, 0, 1)                 # (heads, N, N)
        attn_mask = bias if mask is None else bias + mask[:, None]               # (nW | 1, heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype))
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))


class SwinBlock2d(nn.Module):
    """One (shifted-)window transformer block on a feature map. ``(B, dim, H, W) -> (B, dim, H, W)``, any H, W.

    Args:
        dim: channels. heads: attention heads (must divide ``dim``).
        window: window side. shift: cyclic shift (0 = regular windows, usually ``window // 2``).
        mlp_ratio: hidden width of the MLP relative to ``dim``.
    """

    def __init__(self, dim: int, heads: int, window: int = 8, shift: int = 0, mlp_ratio: float = 4.0):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"SwinBlock2d: dim ({dim}) must be divisible by heads ({heads})")
        if window < 1 or not 0 <= shift < window:
            raise ValueError(f"SwinBlock2d: need window >= 1 and 0 <= shift < window, got {window}, {shift}")
        self.dim, self.window, self.shift = dim, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _attend(self, y: Tensor) -> Tensor:
        """y: (B, H, W, C), normalised → windowed attention output (B, H, W, C)."""
        _, h, w, _ = y.shape
        ws = self.window
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        sh = self.shift if hp > ws else 0
        sw = self.shift if wp > ws else 0
        y = F.pad(y, (0, 0, 0, wp - w, 0, hp - h))
        if sh or sw:
            y = torch.roll(y, (-sh, -sw), (1, 2))
        mask = window_attention_mask(hp, wp, h, w, ws, sh, sw, y.device)
        y = window_reverse(self.attn(window_partition(y, ws), mask), ws, hp, wp)
        if sh or sw:
            y = torch.roll(y, (sh, sw), (1, 2))
        return y[:, :h, :w]

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, dim, H, W) → (B, dim, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"SwinBlock2d: expected (B, {self.dim}, H, W), got {tuple(x.shape)}")
        t = x.permute(0, 2, 3, 1)                                                # (B, H, W, C)
        t = t + self._attend(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return t.permute(0, 3, 1, 2).contiguous()


class SwinLayer2d(nn.Module):
    """``depth`` Swin blocks alternating shift 0 and ``window // 2``. ``(B, dim, H, W) -> (B, dim, H, W)``.

    ``depth=0`` is the identity.
    """

    def __init__(self, dim: int, depth: int, heads: int, window: int = 8, mlp_ratio: float = 4.0):
        super().__init__()
        self.blocks = nn.ModuleList([SwinBlock2d(dim, heads, window, (i % 2) * (window // 2), mlp_ratio)
                                     for i in range(depth)])

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        for block in self.blocks:
            x = block(x)
        return x
