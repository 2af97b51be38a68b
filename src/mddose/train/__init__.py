"""mddose.train: config (:class:`TrainConfig`, recipes), the trainer (:func:`train`) and checkpoints.

Heavy modules are imported lazily: ``from mddose.train import train, load_checkpoint, TrainConfig``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainConfig", "RECIPES", "load_train_config", "train", "Trainer", "load_checkpoint",
           "CheckpointBundle"]

_WHERE = {"TrainConfig": "config", "RECIPES": "config", "load_train_config": "config", "train": "trainer",
          "Trainer": "trainer", "load_checkpoint": "checkpoint", "CheckpointBundle": "checkpoint"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib
        return getattr(importlib.import_module(f"mddose.train.{_WHERE[name]}"), name)
    raise AttributeError(name)
