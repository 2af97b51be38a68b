"""The one device picker: ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` → a ``torch.device``, or one clear line."""

from __future__ import annotations

import torch

from mddose.errors import MddoseError


def pick_device(pref: str, local_rank: int = 0, what: str = "--device") -> torch.device:
    """``"auto"`` → ``cuda:<local_rank>`` when CUDA is available, else the CPU; ``"cuda"`` → ``cuda:<local_rank>``.

    Raises:
        MddoseError: one line naming ``what`` (the option or the config key) for a name torch does not know
        (``"gpu"``), a device that is neither CPU nor CUDA, or CUDA when it is not available.
    """
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(pref)
    except (RuntimeError, ValueError, TypeError):
        raise MddoseError(f"{what}: unknown device {pref!r} (auto | cpu | cuda | cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise MddoseError(f"{what}: unsupported device {pref!r} (auto | cpu | cuda | cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MddoseError(f"{what}: {pref} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev
