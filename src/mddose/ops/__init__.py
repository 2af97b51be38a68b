"""Selective-scan operators: a plain reference and fast paths (CPU kernel, mamba-ssm CUDA)."""

from mddose.ops.scan_ref import selective_scan_ref

try:  # the dispatching fast entry point (mddose.ops.scan); falls back to the reference
    from mddose.ops.scan import selective_scan
except ImportError:  # pragma: no cover - during bootstrap only
    selective_scan = selective_scan_ref

__all__ = ["selective_scan", "selective_scan_ref"]
