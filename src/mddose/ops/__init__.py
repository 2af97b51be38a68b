"""Selective-scan operators: a plain reference and fast paths (CPU kernel, mamba-ssm CUDA).

``selective_scan(..., backend="auto")`` dispatches (see :mod:`mddose.ops.scan`);
``selective_scan_ref`` is the plain PyTorch ground truth with the same signature (minus ``backend``).
"""

from mddose.ops.scan import resolve_backend, selective_scan
from mddose.ops.scan_ref import selective_scan_ref

__all__ = ["resolve_backend", "selective_scan", "selective_scan_ref"]
