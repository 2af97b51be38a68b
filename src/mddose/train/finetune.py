"""Fine-tuning: start a training run from the weights of a trained checkpoint (``mddose train --init``).

:func:`load_init` reads the checkpoint (every file verified, as for prediction), checks that it fits the train
config — same kind, same architecture (the model config the run would build), same inputs (the kind's input
config) and, for a diffusion model, the same schedule and prediction target (what the weights mean; the loss
weighting and type may change) — and returns its weights with a record of where they came from. The run then
starts at step 0 with a fresh optimizer, learning-rate schedule and EMA (:meth:`mddose.train.trainer.Trainer.
start_from`); every checkpoint it writes keeps the record under ``"init"`` in its ``config.json``.

The weights taken are the checkpoint's EMA weights (``ema.safetensors``): what it predicts with, and the only
weights a prediction-only export (a shipped checkpoint) holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mddose.errors import MddoseError

#: entries of a kind's checkpoint meta that only change how the model is trained, not what its weights mean
TRAINING_ONLY = frozenset({"loss_weighting", "min_snr_gamma", "loss_type"})


def _first_difference(old: Any, new: Any, prefix: str) -> str | None:
    """``"key (X in the checkpoint, Y in the train config)"`` for the first key where ``old`` and ``new`` differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if k in TRAINING_ONLY:
                continue
            found = _first_difference(old.get(k), new.get(k), f"{prefix}.{k}")
            if found:
                return found
        return None
    if old != new:
        return f"{prefix} ({old!r} in the checkpoint, {new!r} in the train config)"
    return None


def init_differences(bundle, cfg, model_config) -> str | None:
    """The first difference between checkpoint ``bundle`` (a :class:`~mddose.train.checkpoint.CheckpointBundle`)
    and what the resolved train config ``cfg`` would build (``model_config``: its model config,
    :func:`mddose.train.trainer.model_config_for`): kind, model, inputs, kind entries; None if it fits."""
    kind = cfg.kind
    if bundle.kind != kind.name:
        return f"kind ({bundle.kind!r} in the checkpoint, {kind.name!r} in the train config)"
    mine = model_config.to_dict()
    theirs = bundle.model.config.to_dict() if hasattr(bundle.model, "config") else bundle.meta.get("model")
    meta = {k: bundle.meta.get(k) for k in kind.checkpoint_meta(cfg)}
    return (_first_difference(theirs, mine, "model")
            or _first_difference(bundle.inputs.to_dict(), cfg.inputs.to_dict(), kind.section)
            or _first_difference(meta, kind.checkpoint_meta(cfg), "checkpoint"))


def load_init(path: str | os.PathLike, cfg, model_config, *,
              name: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights to start a run of the resolved train config ``cfg`` from, and the ``"init"`` record.

    Args:
        path: the checkpoint folder. model_config: the model config the run builds.
        name: how the user named it (a path or a shipped name; default: ``path``).
    Returns:
        ``(state_dict, record)``, record = ``{"checkpoint": name, "path": absolute folder, "step": its step,
        "weights": "ema.safetensors", "weights_sha256": ..., "config_sha256": its seal (None if unsealed)}``.
    Raises:
        MddoseError: a checkpoint that does not load, or does not fit ``cfg`` — one line naming the first difference.
    """
    from mddose.train.checkpoint import load_checkpoint
    from mddose.train.integrity import SEAL_KEY, sha256_file

    path = Path(path)
    bundle = load_checkpoint(path)
    diff = init_differences(bundle, cfg, model_config)
    if diff:
        raise MddoseError(f"--init: the checkpoint does not fit the train config: {diff}", path)
    files = bundle.meta.get("files") or {}
    weights = files.get("ema.safetensors", {}).get("sha256") or sha256_file(path / "ema.safetensors")
    record = {"checkpoint": str(name if name is not None else path), "path": str(path.resolve()),
              "step": bundle.meta.get("step"), "weights": "ema.safetensors", "weights_sha256": weights,
              "config_sha256": bundle.meta.get(SEAL_KEY)}
    return {k: v.detach().clone() for k, v in bundle.model.state_dict().items()}, record
