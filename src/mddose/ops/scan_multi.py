"""Several scan directions over one sequence in one call, summed and gated: the bidirectional Mamba mixer's scan.

For K directions of Dk channels each, stacked along the channel axis (direction k = channels
``[k Dk, (k+1) Dk)``), all inputs in the sequence's ORIGINAL token order::

    x_k  = scan(u_k, delta_k, A_k, B_k, C_k, D_k, delta_bias_k)     read from the end if reverse[k]
    out  = (x_1 + ... + x_K) * silu(z)                               (B, Dk, L)

where a reversed direction is exactly ``flip(scan(flip(u_k), flip(delta_k), ..., flip(B_k), flip(C_k)))``.
:func:`selective_scan_multi_ref` computes it that way (flipped copies and the reference scan); the CPU
kernel (:func:`mddose.ops.scan_cpu.selective_scan_multi_cpu`) reads reversed directions backwards in
place, takes B/C and z as strided views (slices of the projections' outputs) and writes the summed,
gated output directly — no flip / cat / contiguous copies around the scan. Other backends (``torch``,
``cuda``, ``ref``) run the flipped composition with their own scan.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from mddose.utils.log import log_once


def check_multi_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                       z: Tensor | None, delta_bias: Tensor | None, reverse) -> None:
    """Raise ``ValueError`` if the shapes disagree (see :func:`selective_scan_multi_ref`)."""
    k = len(reverse)
    if u.dim() != 3 or k < 1 or u.shape[1] % k:
        raise ValueError(f"selective_scan_multi: u must be (B, K*Dk, L) with K={k} directions, got {tuple(u.shape)}")
    bsz, dim, seqlen = u.shape
    if delta.shape != u.shape or A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan_multi: delta {tuple(delta.shape)} / A {tuple(A.shape)} do not match "
                         f"u {tuple(u.shape)}")
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != bsz or t.shape[2:] != (seqlen, A.shape[1]) or t.shape[1] % k:
            raise ValueError(f"selective_scan_multi: {name} must be (B={bsz}, G, L={seqlen}, N={A.shape[1]}) with G "
                             f"a multiple of K={k}, got {tuple(t.shape)}")
    if B.shape[1] != C.shape[1]:
        raise ValueError(f"selective_scan_multi: B and C need the same number of groups, got {B.shape[1]}, {C.shape[1]}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"selective_scan_multi: {name} must be ({dim},), got {tuple(t.shape)}")
    if z is not None and z.shape != (bsz, dim // k, seqlen):
        raise ValueError(f"selective_scan_multi: z must be ({bsz}, {dim // k}, {seqlen}), got {tuple(z.shape)}")


def _span(t: Tensor) -> Tensor | None:
    """The dense 1-D run of memory a view with non-negative strides lies in (it may include other elements)."""
    if any(st < 0 for st in t.stride()):
        return None
    n = 1 + sum((sz - 1) * st for sz, st in zip(t.shape, t.stride()))
    return torch.as_strided(t, (n,), (1,))


def _check_finite_views(named: list[tuple[str, Tensor]]) -> None:
    """:func:`mddose.ops.scan_cpu.check_finite_cpu`, screening a strided view through the memory span it lies in
    (one kernel pass instead of an ``isfinite`` temporary); the view itself is checked only if the span fails."""
    from mddose.ops import scan_cpu

    for name, t in named:
        span = _span(t) if scan_cpu._dense(t) is None else None
        if span is not None:
            try:
                scan_cpu.check_finite_cpu([(name, span)])
                continue
            except ValueError:
                pass
        scan_cpu.check_finite_cpu([(name, t)])


def _composed(scan, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse) -> Tensor:
    """The definition: each direction through ``scan`` (flipped copies for reversed ones), summed, gated."""
    k = len(reverse)
    dk, gk = u.shape[1] // k, B.shape[1] // k
    total = None
    for i, rev in enumerate(reverse):
        ch, gr = slice(i * dk, (i + 1) * dk), slice(i * gk, (i + 1) * gk)
        args = [u[:, ch], delta[:, ch], B[:, gr].transpose(-1, -2), C[:, gr].transpose(-1, -2)]  # B, C: (B, G, N, L)
        if rev:
            args = [a.flip(-1) for a in args]
        u_k, delta_k, B_k, C_k = args
        y = scan(u_k.contiguous(), delta_k.contiguous(), A[ch], B_k, C_k, None if D is None else D[ch],
                 None, None if delta_bias is None else delta_bias[ch], delta_softplus)
        y = y.flip(-1) if rev else y
        total = y if total is None else total + y
    return total if z is None else total * F.silu(z.to(total.dtype))


def selective_scan_multi_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                             z: Tensor | None = None, delta_bias: Tensor | None = None,
                             delta_softplus: bool = False, reverse: tuple[bool, ...] = (False, True)) -> Tensor:
    """K-direction scan, reference (flipped copies and :func:`selective_scan_ref`).

    Args:
        u, delta: (B, K*Dk, L) — direction k on channels [k Dk, (k+1) Dk), original token order.
        A: (K*Dk, N); D, delta_bias: (K*Dk,), optional.
        B, C: (B, G, L, N), G a multiple of K (direction k uses groups [k G/K, (k+1) G/K)); any strides.
        z: (B, Dk, L) gate shared by all directions, optional; any strides.
        reverse: one flag per direction (K = len(reverse)): scan from position L-1 down to 0.

    Returns:
        (B, Dk, L): the sum of the directions' outputs (each with its D skip), times silu(z).
    """
    from mddose.ops.scan_ref import selective_scan_ref

    check_multi_inputs(u, delta, A, B, C, D, z, delta_bias, reverse)
    return _composed(selective_scan_ref, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


def selective_scan_multi(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                         reverse: tuple[bool, ...] = (False, True), backend: str = "auto") -> Tensor:
    """K-direction scan on the fastest backend (see :func:`selective_scan_multi_ref` for the arguments).

    ``backend`` as :func:`mddose.ops.selective_scan`; the CPU kernel runs all directions in one call
    without copies, the others run :func:`selective_scan_multi_ref`'s composition with their own scan.
    """
    from mddose.ops.scan import resolve_backend, selective_scan

    check_multi_inputs(u, delta, A, B, C, D, z, delta_bias, reverse)
    name = resolve_backend(u, A, backend)
    if name == "cpu":
        from mddose.ops import scan_cpu
        from mddose.ops.scan_ref import named_inputs

        _check_finite_views(named_inputs(u, delta, A, B, C, D, z, delta_bias))
        log_once(f"scan-multi-{name}", "mddose: selective_scan_multi uses the 'cpu' kernel (directions in one "
                 "call, no copies)", logging.INFO)
        return scan_cpu.selective_scan_multi_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    log_once(f"scan-multi-{name}-{u.device.type}", f"mddose: selective_scan_multi composes the '{name}' backend's "
             f"scan per direction on {u.device.type}", logging.INFO)

    def scan(*args):
        return selective_scan(*args, backend=name)

    return _composed(scan, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


__all__ = ["check_multi_inputs", "selective_scan_multi", "selective_scan_multi_ref"]
