"""Reference selective scan (Mamba's S6 recurrence) in plain PyTorch — obviously correct, slow.

Semantics and signature follow mamba-ssm's ``selective_scan_ref``:

    delta <- softplus(delta + delta_bias)            (bias / softplus optional)
    h_l    = exp(delta_l * A) * h_{l-1} + delta_l * B_l * u_l       (ZOH for A, Euler for B)
    y_l    = <C_l, h_l> + D * u_l
    out    = y * silu(z)                              (gate optional)

This materialises the (B, D, L, N) discretised tensors and loops over L in Python; it is the
ground truth that every fast path is tested against and the fallback where none is available.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_scan_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                      z: Tensor | None, delta_bias: Tensor | None, finite: bool = True) -> None:
    """Raise ``ValueError`` naming the argument if shapes disagree or (if ``finite``) an input holds NaN/inf."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (B, D, L), got shape {tuple(u.shape)}")
    bsz, dim, seqlen = u.shape
    if min(bsz, dim, seqlen) < 1:
        raise ValueError(f"selective_scan: u must be (B, D, L) with B, D, L >= 1, got shape {tuple(u.shape)}")
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta has shape {tuple(delta.shape)}, expected {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (D={dim}, N), got shape {tuple(A.shape)}")
    dstate = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            ok = t.shape == (bsz, dstate, seqlen)
        elif t.dim() == 4:
            ok = t.shape[0] == bsz and t.shape[2:] == (dstate, seqlen) and t.shape[1] > 0 and dim % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(f"selective_scan: {name} must be (B={bsz}, N={dstate}, L={seqlen}) or "
                             f"(B, G, N, L) with G dividing D={dim}, got shape {tuple(t.shape)}")
    if D is not None and D.shape != (dim,):
        raise ValueError(f"selective_scan: D must be (D={dim},), got shape {tuple(D.shape)}")
    if delta_bias is not None and delta_bias.shape != (dim,):
        raise ValueError(f"selective_scan: delta_bias must be (D={dim},), got shape {tuple(delta_bias.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z has shape {tuple(z.shape)}, expected {tuple(u.shape)}")
    if finite:
        check_finite(named_inputs(u, delta, A, B, C, D, z, delta_bias))


def named_inputs(u, delta, A, B, C, D, z, delta_bias) -> list[tuple[str, Tensor]]:
    """[(argument name, tensor)] of the inputs that are given (not None)."""
    return [(n, t) for n, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                                ("delta_bias", delta_bias)) if t is not None]


def check_finite(named: list[tuple[str, Tensor]]) -> None:
    """Raise ``ValueError`` naming the first input that contains NaN or inf."""
    # cheap screen first: a sum is NaN/inf whenever an element is (it may also overflow, hence the exact
    # per-tensor check before raising); one pass per tensor, no boolean temporaries, one device sync
    sums = torch.stack([t.detach().sum().to(torch.float64) for _, t in named])
    if not bool(torch.isfinite(sums).all()):
        for name, t in named:
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"selective_scan: {name} contains NaN or infinite values")


def _expand_groups(t: Tensor, dim: int) -> Tensor:
    """(B, N, L) or (B, G, N, L) → (B, D, N, L) (a broadcast view for the ungrouped form)."""
    if t.dim() == 3:
        return t.unsqueeze(1)
    groups = t.shape[1]
    return t.repeat_interleave(dim // groups, dim=1)


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None,
                       delta_softplus: bool = False, return_last_state: bool = False):
    """Selective scan, reference implementation.

    Args:
        u: (B, D, L) input.
        delta: (B, D, L) time steps (before bias/softplus).
        A: (D, N) state matrix (diagonal per channel; negative real for stability).
        B: (B, N, L) or (B, G, N, L) input projection.
        C: (B, N, L) or (B, G, N, L) output projection.
        D: (D,) skip connection, optional.
        z: (B, D, L) gate, optional (out *= silu(z)).
        delta_bias: (D,) added to delta, optional.
        delta_softplus: apply softplus to delta (after the bias).
        return_last_state: also return the final state h_L: (B, D, N).

    Returns:
        out: (B, D, L) in u's dtype, and the last state if requested.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = u.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    u_, delta_, A_ = u.to(compute), delta.to(compute), A.to(compute)
    B_, C_ = _expand_groups(B.to(compute), u.shape[1]), _expand_groups(C.to(compute), u.shape[1])
    if delta_bias is not None:
        delta_ = delta_ + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta_ = F.softplus(delta_)
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta_, A_))                       # (B, D, L, N)
    dBu = (delta_ * u_).unsqueeze(-1) * B_.transpose(-1, -2)                        # (B, D, L, N)
    Ct = C_.transpose(-1, -2)                                                       # (B, 1|D, L, N)
    h = u_.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    # unbind (not dA[:, :, i]): its backward stacks the step gradients once instead of scattering each
    # into a fresh (B, D, L, N) zero tensor, which made the backward quadratic in L
    for dA_i, dBu_i, C_i in zip(dA.unbind(2), dBu.unbind(2), Ct.unbind(2)):
        h = dA_i * h + dBu_i
        ys.append((h * C_i).sum(-1))
    y = torch.stack(ys, dim=2)                                                      # (B, D, L)
    out = y if D is None else y + u_ * D.to(compute)[:, None]
    if z is not None:
        out = out * F.silu(z.to(compute))
    out = out.to(dtype)
    return (out, h.to(dtype)) if return_last_state else out
