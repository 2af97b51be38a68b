"""Chunked selective scan in plain PyTorch: the ``torch`` backend (any device, no compiled extension).

The sequence of length L is cut into ``nc`` chunks of ``T`` steps (L padded with steps that change nothing:
delta = 0 gives decay 1 and input 0). Writing a_l = exp(dt_l A) (B, D, N) and x_l = dt_l u_l B_l::

    1. local scan   h^loc_{c,t} = a_{c,t} h^loc_{c,t-1} + x_{c,t}      t = 0..T-1, all chunks at once
       and the decay from the chunk's start  P_{c,t} = a_{c,0} ... a_{c,t}   (cumprod: products of values <= 1)
    2. carry        H_c = P_{c,T-1} H_{c-1} + h^loc_{c,T-1}              c = 0..nc-1 (H_{-1} = 0)
    3. correct      h_{c,t} = h^loc_{c,t} + P_{c,t} H_{c-1};   y = <C, h> + D u;   out = y * silu(z)

So there are T + nc sequential steps (about 2 sqrt(L)) instead of L, each on a (B, D, nc, N) or (B, D, N) slab;
every exponential is of a non-positive number (A < 0, dt >= 0 after softplus) and no division by a decay
is needed, so the result is as stable as the sequential recurrence. Autograd differentiates it (PyTorch's
own backward of these ops). Memory: a few (B, D, L, N) tensors, like the reference — this is the path for
GPUs without mamba-ssm (a few hundred kernel launches per call instead of tens of thousands), not a CPU
fast path (the C kernel is, see :mod:`mddose.ops.scan_cpu`).

Why no eager-PyTorch formulation is 10x faster than the reference on a CPU: with a decay per (channel, state)
(Mamba-1's diagonal A) the states h (B, D, L, N) cannot be avoided (the matrix form of Mamba-2 needs one decay
per head; here its (T, T) blocks would be per state too, T times larger), so every formulation makes
elementwise passes over (B, D, L, N) tensors: forward at least exp(dt A), dt u B, the recurrence and <C, h>,
the backward about twice that. Measured at B=8, L=4096, D=192, N=16 (1 thread, process CPU time, 2-core VM,
contended): one pass costs 37 ms (in-place mul) to 95 ms (addcmul), exp 69 ms; so forward + backward costs
at least ~1 s of passes even perfectly fused, against 5.6 s for the reference (the C kernel: 0.19 s) — at
most ~5x, before any dispatch overhead. The chunked form here took 12 s (9.5 s with ``chunk=16``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mddose.ops.scan_ref import check_scan_inputs


def chunk_size(seqlen: int) -> int:
    """Steps per chunk: about sqrt(L) (minimises T + L/T sequential steps), in [8, 256], a multiple of 8."""
    t = int(math.ceil(math.sqrt(max(seqlen, 1)) / 8.0)) * 8
    return max(8, min(256, t))


def _expand_bc(t: Tensor, dim: int) -> Tensor:
    """(B, N, L) or (B, G, N, L) → (B, 1 | D, L, N) (a view for the ungrouped form)."""
    if t.dim() == 3:
        return t.unsqueeze(1).transpose(-1, -2)
    return t.repeat_interleave(dim // t.shape[1], dim=1).transpose(-1, -2)


def selective_scan_torch(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, delta_bias: Tensor | None = None,
                         delta_softplus: bool = False, return_last_state: bool = False, chunk: int | None = None):
    """Selective scan, chunked (see the module docstring). Same contract as
    :func:`mddose.ops.scan_ref.selective_scan_ref`; ``chunk`` overrides the steps per chunk.

    Args:
        u, delta: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L); D, delta_bias: (D,); z: (B, D, L).

    Returns:
        out: (B, D, L) in u's dtype, plus the last state (B, D, N) if ``return_last_state``.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, finite=False)
    dtype = u.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    nb, dim, seqlen = u.shape
    dstate = A.shape[1]
    T = int(chunk) if chunk else chunk_size(seqlen)
    nc = (seqlen + T - 1) // T
    pad = nc * T - seqlen
    u_, dt = u.to(compute), delta.to(compute)
    if delta_bias is not None:
        dt = dt + delta_bias.to(compute)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bt, Ct = _expand_bc(B.to(compute), dim), _expand_bc(C.to(compute), dim)    # (B, 1|D, L, N)
    if pad:
        dt_p, u_p = F.pad(dt, (0, pad)), F.pad(u_, (0, pad))                     # padded steps: decay 1, input 0
        Bt, Ct = F.pad(Bt, (0, 0, 0, pad)), F.pad(Ct, (0, 0, 0, pad))
    else:
        dt_p, u_p = dt, u_
    gB, gC = Bt.shape[1], Ct.shape[1]
    # step-major layout (T, B, D, nc, N): every step of the local scan is one contiguous slab
    dt_t = dt_p.view(nb, dim, nc, T).permute(3, 0, 1, 2).contiguous()            # (T, B, D, nc)
    dtu_t = (dt_p * u_p).view(nb, dim, nc, T).permute(3, 0, 1, 2)                # (T, B, D, nc)
    B_t = Bt.reshape(nb, gB, nc, T, dstate).permute(3, 0, 1, 2, 4)              # (T, B, 1|D, nc, N)
    C_t = Ct.reshape(nb, gC, nc, T, dstate).permute(3, 0, 1, 2, 4)
    a = torch.exp(dt_t.unsqueeze(-1) * A.to(compute).view(1, 1, dim, 1, dstate))  # (T, B, D, nc, N), in (0, 1]
    x = dtu_t.unsqueeze(-1) * B_t                                                # (T, B, D, nc, N)
    # 1. local scans of all chunks at once (unbind, not a[t]: the backward stacks the step gradients once
    #    instead of scattering each into a fresh full-size zero tensor)
    hs, h = [], None
    for a_t, x_t in zip(a.unbind(0), x.unbind(0)):
        h = x_t if h is None else torch.addcmul(x_t, a_t, h)
        hs.append(h)
    # decay from each chunk's start: exp(A * cumsum(dt)) (exponent <= 0), and over the whole chunk
    P = torch.exp(torch.cumsum(dt_t, 0).unsqueeze(-1) * A.to(compute).view(1, 1, dim, 1, dstate))
    # 2. carry the state across chunks: Hin[c] = state entering chunk c
    carry, Hs = u_.new_zeros(nb, dim, dstate), []
    for h_end, p_end in zip(hs[-1].unbind(2), P[-1].unbind(2)):
        Hs.append(carry)
        carry = torch.addcmul(h_end, p_end, carry)
    Hin = torch.stack(Hs, dim=2)                                                # (B, D, nc, N)
    # 3. correct the local states and read out: y = <C, hloc + P Hin>
    hfull = torch.addcmul(torch.stack(hs, 0), P, Hin.unsqueeze(0))              # (T, B, D, nc, N)
    y = (hfull * C_t).sum(-1).permute(1, 2, 3, 0).reshape(nb, dim, nc * T)[..., :seqlen]
    out = y if D is None else y + u_ * D.to(compute)[:, None]
    if z is not None:
        out = out * F.silu(z.to(compute))
    out = out.to(dtype)
    return (out, carry.to(dtype)) if return_last_state else out
