"""The Mamba (S6) mixer of Gu & Dao (2023), written from the paper, on top of ``mddose.ops.selective_scan``.

One direction of a Mamba mixer, for a token sequence ``x: (B, L, d_model)``::

    x, z  = in_proj(x).chunk(2)                 # (B, d_inner, L) each, d_inner = expand * d_model
    x     = silu(causal_depthwise_conv1d(x))    # kernel d_conv, left padding d_conv - 1
    dt, B, C = x_proj(x).split(dt_rank, N, N)    # input-dependent ("selective") parameters
    dt    = dt_proj.weight @ dt                 # (B, d_inner, L); dt_proj.bias is the scan's delta_bias
    y     = selective_scan(x, dt, A=-exp(A_log), B, C, D, z=z, delta_bias, delta_softplus=True)
    out   = out_proj(y)                         # (B, L, d_model)

The per-direction parameters (conv, x_proj, dt_proj, A_log, D) live in :class:`SSMBranch` so that the
bidirectional (Vim) and four-direction (VMamba) mixers can own several branches that share one
``in_proj``/``out_proj`` and run all directions in a single scan call (:func:`scan_branches`, which stacks
the directions along the channel axis and passes B/C in the grouped ``(B, G, N, L)`` form).

:func:`scan_directions` is the copy-free form used by the one- and two-way mixers: every direction works on
the sequence in its original order (a reversed direction's causal conv becomes an anti-causal one with the
kernel flipped), the directions' projections are batched matmuls whose outputs the scan reads through
strides (:func:`mddose.ops.scan_multi.selective_scan_multi`), and the gated sum of the directions comes out
of the scan directly. :func:`scan_directions_ref` is its plain twin (flipped copies, one branch at a time).
:func:`run_mixer`'s fast path keeps every ``(B, d_inner, L)`` tensor channels-first and contiguous: the in- and
out-projections are batched products on transposed views (:func:`in_projection`, :func:`out_projection`, manual
backward), so neither the projections nor their gradients are copied, and the depthwise conv is a few
multiply-adds of shifted slices (:func:`shift_conv_silu`, no padded copy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mddose.ops import selective_scan
from mddose.ops.scan_multi import selective_scan_multi


def resolve_dt_rank(dt_rank: int | str, d_model: int) -> int:
    """``"auto"`` → ``ceil(d_model / 16)`` (mamba-ssm's default), else the integer itself."""
    if dt_rank == "auto":
        return math.ceil(d_model / 16)
    if not isinstance(dt_rank, int) or dt_rank < 1:
        raise ValueError(f"dt_rank must be 'auto' or a positive integer, got {dt_rank!r}")
    return dt_rank


def inverse_softplus(y: Tensor) -> Tensor:
    """x with softplus(x) = y, for y > 0 (stable form ``y + log(-expm1(-y))``)."""
    return y + torch.log(-torch.expm1(-y))


@dataclass
class ScanInputs:
    """The arguments of one direction's selective scan (shapes as in ``selective_scan``)."""

    u: Tensor            # (B, D, L)
    delta: Tensor        # (B, D, L), before bias/softplus
    A: Tensor            # (D, N)
    B: Tensor            # (B, N, L)
    C: Tensor            # (B, N, L)
    D: Tensor            # (D,)
    delta_bias: Tensor   # (D,)


class SSMBranch(nn.Module):
    """Per-direction parameters of a Mamba mixer: causal depthwise conv, x_proj, dt_proj, A_log, D.

    Args:
        d_inner: channels of the scan.
        d_state: state size N.
        d_conv: causal conv kernel; 0 means no conv (SS2D applies a shared 2D conv instead).
        dt_rank: rank of the dt projection (an int; see :func:`resolve_dt_rank`).
    """

    def __init__(self, d_inner: int, d_state: int = 16, d_conv: int = 4, dt_rank: int = 1,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True):
        super().__init__()
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = d_inner, d_state, d_conv, dt_rank
        self.conv1d = (nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
                       if d_conv > 0 else None)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        # mamba-ssm's dt init: weights uniform ±dt_rank^-0.5; bias = softplus^-1(dt), dt log-uniform in
        # [dt_min, dt_max] floored at dt_init_floor, so that softplus(bias) starts in that range.
        std = dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus(dt.clamp(min=dt_init_floor)))
        # S4D-real init: A = -[1, 2, ..., N] for every channel.
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(d_inner))

    def prepare(self, x: Tensor, *, conv: bool = True) -> ScanInputs:
        """Scan inputs of this direction from ``x: (B, d_inner, L)`` (the in_proj output, already in scan order).

        Applies the causal conv (if any and ``conv``) and SiLU, then the selective projections.
        """
        seqlen = x.shape[-1]
        if self.conv1d is not None and conv:
            x = F.silu(self.conv1d(x)[..., :seqlen])
        x_dbl = self.x_proj(x.transpose(1, 2))                                   # (B, L, R + 2N)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = torch.matmul(self.dt_proj.weight, dt.transpose(1, 2))            # (B, d_inner, L)
        return ScanInputs(u=x, delta=delta, A=-torch.exp(self.A_log.float()),
                          B=b.transpose(1, 2).contiguous(), C=c.transpose(1, 2).contiguous(),
                          D=self.D.float(), delta_bias=self.dt_proj.bias.float())


def scan_branches(parts: list[ScanInputs], z: list[Tensor] | None = None) -> list[Tensor]:
    """Run several same-sized directions in ONE ``selective_scan`` call; returns each ``(B, D, L)`` output.

    The directions are stacked along the channel axis (``G`` groups of ``D`` channels); B and C are
    passed in the grouped form ``(B, G, N, L)`` so each group reads its own direction's B/C.
    ``z``: one gate ``(B, D, L)`` per direction, or None (no gating).
    """
    if len(parts) == 1:
        p = parts[0]
        return [selective_scan(p.u.contiguous(), p.delta.contiguous(), p.A, p.B, p.C, p.D,
                               z=None if z is None else z[0].contiguous(),
                               delta_bias=p.delta_bias, delta_softplus=True)]
    dim = parts[0].u.shape[1]
    out = selective_scan(
        torch.cat([p.u for p in parts], 1), torch.cat([p.delta for p in parts], 1),
        torch.cat([p.A for p in parts], 0), torch.stack([p.B for p in parts], 1),
        torch.stack([p.C for p in parts], 1), torch.cat([p.D for p in parts], 0),
        z=None if z is None else torch.cat(z, 1),
        delta_bias=torch.cat([p.delta_bias for p in parts], 0), delta_softplus=True)
    return list(torch.split(out, dim, dim=1))


def conv_silu(branch: SSMBranch, x: Tensor, reverse: bool = False) -> Tensor:
    """silu(causal depthwise conv) of ``x: (B, d_inner, L)`` in the direction's scan order, returned in the
    original order: for ``reverse`` the conv runs on the flipped sequence, i.e. it is anti-causal with the
    kernel flipped (no flipped copy of ``x``). No conv (``d_conv=0``): ``x`` itself."""
    conv = branch.conv1d
    if conv is None:
        return x
    seqlen, k = x.shape[-1], conv.kernel_size[0]
    if not reverse:
        return F.silu(conv(x)[..., :seqlen])
    y = F.conv1d(x, conv.weight.flip(-1), conv.bias, padding=k - 1, groups=conv.groups)
    return F.silu(y[..., k - 1:])


class _ShiftConv(torch.autograd.Function):
    """Depthwise causal (or, reversed, anti-causal with the kernel flipped) conv of ``x: (B, Di, L)`` (any strides)
    for K directions at once, as multiply-adds of shifted slices of ``x`` (no padded copy); manual backward."""

    @staticmethod
    def _taps(k: int, seqlen: int, rev: bool):
        """(tap j, output slice, input slice) of the taps that shift (the last tap, j = k-1, does not)."""
        for j in range(k - 1):
            s = k - 1 - j
            if s < seqlen:
                yield j, (slice(None, seqlen - s), slice(s, None)) if rev else (slice(s, None), slice(None, seqlen - s))

    @staticmethod
    def forward(ctx, x, w, b, reverse):   # w: (K, Di, k), b: (K, Di) or None → (B, K*Di, L)
        nb, dim, seqlen = x.shape
        k = w.shape[-1]
        out = x.new_empty(nb, len(reverse), dim, seqlen)
        for i, rev in enumerate(reverse):
            o = out[:, i]
            torch.mul(x, w[i, :, k - 1, None], out=o)
            if b is not None:
                o.add_(b[i, :, None])
            for j, (so, si) in _ShiftConv._taps(k, seqlen, rev):
                o[..., so].addcmul_(x[..., si], w[i, :, j, None])
        ctx.save_for_backward(x, w)
        ctx.meta = (reverse, b is not None)
        return out.view(nb, len(reverse) * dim, seqlen)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        reverse, has_b = ctx.meta
        k, seqlen = w.shape[-1], x.shape[-1]
        g = grad.unflatten(1, (len(reverse), x.shape[1]))                         # (B, K, Di, L)
        gx = dw = None
        if ctx.needs_input_grad[0]:
            gx = torch.mul(g[:, 0], w[0, :, k - 1, None])
            for i in range(1, len(reverse)):
                gx.addcmul_(g[:, i], w[i, :, k - 1, None])
            for i, rev in enumerate(reverse):
                for j, (so, si) in _ShiftConv._taps(k, seqlen, rev):
                    gx[..., si].addcmul_(g[:, i][..., so], w[i, :, j, None])
        if ctx.needs_input_grad[1]:
            dw = torch.zeros_like(w)
            for i, rev in enumerate(reverse):
                dw[i, :, k - 1] = (g[:, i] * x).sum((0, 2))
                for j, (so, si) in _ShiftConv._taps(k, seqlen, rev):
                    dw[i, :, j] = (g[:, i][..., so] * x[..., si]).sum((0, 2))
        db = g.sum((0, 3)) if has_b and ctx.needs_input_grad[2] else None
        return gx, dw, db, None


def shift_conv_silu(branches: list[SSMBranch], x: Tensor, reverse: tuple[bool, ...]) -> Tensor:
    """All directions' :func:`conv_silu`, stacked on channels ``(B, K*d_inner, L)``, as d_conv shifted multiply-adds
    of shifted slices of ``x`` (:class:`_ShiftConv`; the depthwise conv has few taps, and PyTorch's depthwise
    conv1d is slow on a CPU on channels-first inputs, its backward on any). Same result as
    ``cat([conv_silu(br, x, rev) ...])``."""
    w = torch.stack([br.conv1d.weight[:, 0] for br in branches])                # (K, Di, k)
    biases = [br.conv1d.bias for br in branches]
    b = None if all(v is None for v in biases) else \
        torch.stack([w.new_zeros(w.shape[1]) if v is None else v for v in biases])          # (K, Di)
    return F.silu(_ShiftConv.apply(x, w, b, tuple(reverse)))


def scan_directions(branches: list[SSMBranch], x: Tensor, z: Tensor | None, reverse: tuple[bool, ...]) -> Tensor:
    """Run one :class:`SSMBranch` per direction over ``x: (B, d_inner, L)`` (original order) and return the
    sum of their outputs gated by ``z: (B, d_inner, L)`` (any strides): ``(B, d_inner, L)``.

    Direction k scans from the end if ``reverse[k]``. Same result as :func:`scan_directions_ref`, without
    the flipped / concatenated / transposed copies (see the module docstring).
    """
    k = len(branches)
    nb, dim, seqlen = x.shape
    br0 = branches[0]
    rank, dstate = br0.dt_rank, br0.d_state
    if all(br.conv1d is not None for br in branches):
        u = shift_conv_silu(branches, x, reverse)                                # (B, K*Di, L)
    else:
        u = torch.cat([conv_silu(br, x, rev) for br, rev in zip(branches, reverse)], 1) if k > 1 \
            else conv_silu(br0, x, reverse[0])
    w_x = torch.stack([br.x_proj.weight for br in branches]) if k > 1 else br0.x_proj.weight[None]
    # (K, R+2N, Di) @ (B, K, Di, L): u's gradient comes out contiguous (no transposed gradient through the cat
    # and silu backwards); the small (R+2N)-row result is then laid out (B, K, L, R+2N) for the scan
    x_dbl = torch.matmul(w_x, u.view(nb, k, dim, seqlen)).transpose(-1, -2).contiguous()   # (B, K, L, R+2N)
    # split, not three slices: the gradients are put together by one cat instead of three zero-filled copies
    dts, bs, cs = torch.split(x_dbl, [rank, dstate, dstate], dim=-1)
    w_dt = torch.stack([br.dt_proj.weight for br in branches]) if k > 1 else br0.dt_proj.weight[None]
    delta = torch.matmul(w_dt, dts.transpose(-1, -2))                           # (B, K, Di, L)
    cat = (lambda ts: torch.cat(ts, 0)) if k > 1 else (lambda ts: ts[0])         # noqa: E731
    return selective_scan_multi(
        u, delta.reshape(nb, k * dim, seqlen), cat([-torch.exp(br.A_log.float()) for br in branches]),
        bs, cs, cat([br.D.float() for br in branches]),
        z=z, delta_bias=cat([br.dt_proj.bias.float() for br in branches]), delta_softplus=True, reverse=reverse)


def scan_directions_ref(branches: list[SSMBranch], x: Tensor, z: Tensor | None, reverse: tuple[bool, ...]) -> Tensor:
    """Plain twin of :func:`scan_directions`: flip the sequence (and gate) of a reversed direction, run the
    branch (:meth:`SSMBranch.prepare`, :func:`scan_branches`), flip its output back, sum."""
    total = None
    for br, rev in zip(branches, reverse):
        xs, zs = (x.flip(-1), None if z is None else z.flip(-1)) if rev else (x, z)
        (y,) = scan_branches([br.prepare(xs)], None if zs is None else [zs])
        y = y.flip(-1) if rev else y
        total = y if total is None else total + y
    return total


#: "fast" = :func:`scan_directions`; "ref" = :func:`scan_directions_ref` (tests compare them on real weights)
MIXER_PATHS = ("fast", "ref")


def mixer_path() -> str:
    """The mixers' scan path: ``$MDDOSE_MIXER_PATH`` ("fast", default, or "ref")."""
    import os

    path = os.environ.get("MDDOSE_MIXER_PATH", "fast").strip().lower() or "fast"
    if path not in MIXER_PATHS:
        raise ValueError(f"$MDDOSE_MIXER_PATH={path!r} is not one of {', '.join(MIXER_PATHS)}")
    return path


class _OutProj(torch.autograd.Function):
    """``y (B, C, L) → y^T W^T + b: (B, L, out)`` as batched products on transposed views (no copies, forward
    or backward; the gradient of ``y`` comes back contiguous for the scan)."""

    @staticmethod
    def forward(ctx, y, weight, bias):
        out = torch.bmm(y.transpose(1, 2), weight.t().to(y.dtype).expand(y.shape[0], *weight.t().shape))
        if bias is not None:
            out.add_(bias.to(out.dtype))
        ctx.save_for_backward(y, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        y, weight = ctx.saved_tensors
        dt = grad.dtype
        gt = grad.transpose(1, 2)                                                 # (B, out, L)
        gy = gw = gb = None
        if ctx.needs_input_grad[0]:
            gy = torch.bmm(weight.t().to(dt).expand(y.shape[0], *weight.t().shape), gt).to(y.dtype)
        if ctx.needs_input_grad[1]:
            gw = torch.bmm(gt, y.transpose(1, 2).to(dt)).sum(0).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 1))
        return gy, gw, gb


class _InProj(torch.autograd.Function):
    """``x (B, L, C) →`` the two halves of ``x W^T + b`` channels-first, ``(B, split, L)`` and ``(B, rows - split,
    L)``, each contiguous, as batched products on the transposed view of ``x`` (no copies, forward or backward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, split):
        xt, nb = x.transpose(1, 2), x.shape[0]
        w = weight.to(x.dtype)
        halves = []
        for rows in (slice(None, split), slice(split, None)):
            h = torch.bmm(w[rows].expand(nb, *w[rows].shape), xt)
            if bias is not None:
                h.add_(bias[rows, None].to(h.dtype))
            halves.append(h)
        ctx.save_for_backward(x, weight)
        ctx.meta = (split, bias is not None)
        return tuple(halves)

    @staticmethod
    def backward(ctx, g1, g2):
        x, weight = ctx.saved_tensors
        split, has_bias = ctx.meta
        parts = [(slice(None, split), g1), (slice(split, None), g2)]
        parts = [(rows, g) for rows, g in parts if g is not None]
        dt = parts[0][1].dtype
        w, xx = weight.to(dt), x.to(dt)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            for rows, g in parts:
                wr = w[rows].expand(x.shape[0], *w[rows].shape)
                gx = torch.bmm(g.transpose(1, 2), wr) if gx is None else gx.baddbmm_(g.transpose(1, 2), wr)
            gx = gx.to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = torch.zeros_like(weight)
            for rows, g in parts:
                gw[rows] = torch.bmm(g, xx).sum(0)
        if has_bias and ctx.needs_input_grad[2]:
            gb = x.new_zeros(weight.shape[0])
            for rows, g in parts:
                gb[rows] = g.sum((0, 2))
        return gx, gw, gb, None


def out_projection(lin: nn.Linear, y: Tensor) -> Tensor:
    """``lin`` applied to the channels of ``y: (B, C, L)``: ``(B, L, out)`` contiguous (:class:`_OutProj`)."""
    return _OutProj.apply(y, lin.weight, lin.bias)


def in_projection(lin: nn.Linear, x: Tensor, d_inner: int) -> tuple[Tensor, Tensor]:
    """The two halves of ``lin(x)`` for ``x: (B, L, C)``, channels-first: ``(B, d_inner, L)`` each, contiguous
    (:class:`_InProj`: no copy of ``x``, of the halves, or of their gradients)."""
    return _InProj.apply(x, lin.weight, lin.bias, d_inner)


def run_mixer(in_proj: nn.Linear, out_proj: nn.Linear, branches: list[SSMBranch], x: Tensor,
              reverse: tuple[bool, ...]) -> Tensor:
    """The one- or multi-direction Mamba mixer on ``x: (B, L, C)`` (shared in/out projections, gate z)."""
    d_inner = branches[0].d_inner
    if mixer_path() == "ref":
        xz = in_proj(x).transpose(1, 2)                                          # (B, 2*d_inner, L)
        xs, z = xz.chunk(2, dim=1)
        return out_proj(scan_directions_ref(branches, xs, z, reverse).transpose(1, 2))
    xs, z = in_projection(in_proj, x, d_inner)                                   # (B, d_inner, L) each
    y = scan_directions(branches, xs, z, reverse)                                # (B, d_inner, L)
    return out_projection(out_proj, y)


class MambaMixer(nn.Module):
    """One-directional (causal) Mamba mixer. ``forward(x: (B, L, d_model)) -> (B, L, d_model)``."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, bias: bool = False, conv_bias: bool = True):
        super().__init__()
        self.d_model, self.d_inner = d_model, int(expand * d_model)
        self.dt_rank = resolve_dt_rank(dt_rank, d_model)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.ssm = SSMBranch(self.d_inner, d_state, d_conv, self.dt_rank, dt_min, dt_max, dt_init_floor, conv_bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    # Convenience views of the branch's parameters (names as in mamba-ssm).
    @property
    def A_log(self) -> nn.Parameter:
        return self.ssm.A_log

    @property
    def D(self) -> nn.Parameter:
        return self.ssm.D

    @property
    def dt_proj(self) -> nn.Linear:
        return self.ssm.dt_proj

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, d_model) → (B, L, d_model)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"MambaMixer: expected (B, L, {self.d_model}), got {tuple(x.shape)}")
        return run_mixer(self.in_proj, self.out_proj, [self.ssm], x, (False,))
