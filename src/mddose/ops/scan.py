"""Selective scan entry point: picks the fastest available backend for the inputs.

Backends:
    ``cpu``  — fused C kernel (:mod:`mddose.ops.scan_cpu`), forward + backward, float32/float64;
    ``cuda`` — ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (CUDA tensors only);
    ``torch`` — :func:`mddose.ops.scan_torch.selective_scan_torch`, a chunked scan in plain PyTorch (any
             device, no compiled extension: about 2 sqrt(L) sequential steps instead of L);
    ``ref``  — :func:`mddose.ops.scan_ref.selective_scan_ref` (plain PyTorch, any device).

``backend="auto"`` (default) uses ``$MDDOSE_SCAN_BACKEND`` if set, else ``cuda`` for CUDA tensors when
mamba-ssm is importable and ``torch`` when it is not, ``cpu`` for CPU tensors when the kernel builds, and
``ref`` otherwise.
The choice is logged once per (backend, reason).
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import Tensor

from mddose.ops.scan_ref import check_finite, check_scan_inputs, named_inputs, selective_scan_ref
from mddose.utils.log import log_once

BACKENDS = ("auto", "cpu", "cuda", "torch", "ref")
ENV_VAR = "MDDOSE_SCAN_BACKEND"


@functools.lru_cache(maxsize=None)
def _mamba_ssm_fn():
    """mamba-ssm's CUDA ``selective_scan_fn`` or ``None`` if not importable."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - ImportError, or a broken CUDA extension
        return None
    return selective_scan_fn


def _cpu_available(u: Tensor) -> bool:
    from mddose.ops import scan_cpu

    return scan_cpu.load_kernel(torch.float64 if u.dtype == torch.float64 else torch.float32) is not None


def resolve_backend(u: Tensor, A: Tensor, backend: str = "auto") -> str:
    """The backend that :func:`selective_scan` will use for these inputs ("cpu", "cuda", "torch" or "ref").

    Raises ``ValueError`` for an unknown name or a backend that cannot run on the tensors' device.
    A forced ``cpu`` whose kernel fails to build falls back to ``ref`` (logged once).
    """
    requested = backend
    if backend == "auto":
        requested = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
        if requested not in BACKENDS:
            raise ValueError(f"selective_scan: ${ENV_VAR}={requested!r} is not one of {', '.join(BACKENDS)}")
    elif backend not in BACKENDS:
        raise ValueError(f"selective_scan: backend={backend!r} is not one of {', '.join(BACKENDS)}")
    from mddose.ops.scan_cpu import kernel_supports

    if requested == "auto":
        if u.is_cuda:
            requested = "cuda" if _mamba_ssm_fn() is not None else "torch"
        else:
            requested = "cpu" if kernel_supports(u, A) and _cpu_available(u) else "ref"
    elif requested == "cuda":
        if not u.is_cuda:
            raise ValueError("selective_scan: backend 'cuda' needs CUDA tensors")
        if _mamba_ssm_fn() is None:
            raise ValueError("selective_scan: backend 'cuda' needs mamba-ssm (pip install mamba-ssm)")
    elif requested == "cpu":
        if not kernel_supports(u, A):
            raise ValueError("selective_scan: backend 'cpu' needs CPU floating-point tensors, state size N <= 256 "
                             "and L >= 1")
        if not _cpu_available(u):
            requested = "ref"  # the build failure itself was logged by scan_cpu
    return requested


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, backend: str = "auto"):
    """Selective scan (Mamba S6), dispatched to the fastest backend; see :func:`selective_scan_ref`.

    Args:
        u, delta: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L); D, delta_bias: (D,); z: (B, D, L).
        backend: "auto" | "cpu" | "cuda" | "torch" | "ref" ("auto" honours ``$MDDOSE_SCAN_BACKEND``).

    Returns:
        out: (B, D, L), plus the last state (B, D, N) if ``return_last_state``.
        Gradients flow to every tensor input (and, on the cpu/ref backends, from the last state).
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, finite=False)
    name = resolve_backend(u, A, backend)
    named = named_inputs(u, delta, A, B, C, D, z, delta_bias)
    if name == "cpu":
        from mddose.ops.scan_cpu import check_finite_cpu

        check_finite_cpu(named)  # in the kernel library: no torch thread-pool round trips
    else:
        check_finite(named)
    log_once(f"scan-backend-{name}-{u.device.type}", f"mddose: selective_scan uses the '{name}' backend "
             f"on {u.device.type}", logging.INFO)
    if name == "cpu":
        from mddose.ops.scan_cpu import selective_scan_cpu

        return selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "torch":
        from mddose.ops.scan_torch import selective_scan_torch

        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "cuda":
        return _mamba_ssm_fn()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
