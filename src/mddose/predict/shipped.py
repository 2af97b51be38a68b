"""Checkpoints shipped inside the package (``mddose/checkpoints/<name>/``), usable by name.

``mddose predict --checkpoint openkbp-small`` works right after ``pip install``: :func:`resolve_checkpoint`
turns a name into the package folder; a path is used as it is. Each shipped checkpoint is a prediction-only
export (:func:`mddose.train.checkpoint.export_for_prediction`) with a model card.
"""

from __future__ import annotations

import os
from pathlib import Path

from mddose.errors import MddoseError

#: where shipped checkpoints live (package data)
SHIPPED_ROOT = Path(__file__).resolve().parents[1] / "checkpoints"


def shipped_checkpoints(root: Path | None = None) -> dict[str, Path]:
    """Name → folder of every shipped checkpoint (folders holding a ``config.json``), sorted by name."""
    root = SHIPPED_ROOT if root is None else Path(root)
    if not root.is_dir():
        return {}
    return {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and (d / "config.json").is_file()}


def resolve_checkpoint(arg: str | os.PathLike, root: Path | None = None) -> Path:
    """A checkpoint folder from ``--checkpoint``: an existing path, or the name of a shipped checkpoint.

    Raises:
        MddoseError: neither (one line listing the shipped names).
    """
    p = Path(arg)
    if p.exists():
        return p
    shipped = shipped_checkpoints(root)
    if str(arg) in shipped:
        return shipped[str(arg)]
    known = ", ".join(shipped) if shipped else "none in this version"
    raise MddoseError(f"--checkpoint: no checkpoint folder and no shipped checkpoint named {str(arg)!r} "
                      f"(shipped: {known})")


def shipped_validation(folder: Path) -> dict | None:
    """The scores measured for a shipped checkpoint (its ``validation.json``): ``{"dose_score", "dvh_score",
    "patients", ...}`` (Gy, OpenKBP definitions), or None when it has none."""
    import json

    try:
        v = json.loads((folder / "validation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return v if isinstance(v, dict) else None


def shipped_summary(root: Path | None = None) -> list[dict]:
    """One dict per shipped checkpoint: name, model, preset, kind, step, its sampler defaults (``predict``), path,
    the model card's title, and ``validation``: the measured scores (:func:`shipped_validation`, or None)."""
    import json

    out = []
    for name, d in shipped_checkpoints(root).items():
        try:
            cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        card = d / "MODEL_CARD.md"
        title = card.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip() if card.is_file() else ""
        out.append({"name": name, "model": (cfg.get("model") or {}).get("model"),
                    "preset": (cfg.get("train_config") or {}).get("preset"), "kind": cfg.get("kind"),
                    "step": cfg.get("step"), "predict": cfg.get("predict") or {}, "path": str(d), "card": title,
                    "validation": shipped_validation(d)})
    return out
