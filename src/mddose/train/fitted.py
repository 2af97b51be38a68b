"""Models fitted by their kind, not trained by gradient steps (the tree ensembles): one run into ``out``.

``mddose train`` calls :func:`fit_run` for a model whose kind has a ``fit``
(:attr:`mddose.kinds.base.ModelKind.fit`): the kind fits (its rounds go to ``logs/train.csv``: ``step`` = rounds,
``loss`` = the training error in Gy, ``time``), and this module builds the model from the result, scores the
validation patients (``logs/val.csv``), and writes ``out/last`` and ``out/best`` (the same fit) like any checkpoint:
safetensors, sealed ``config.json``, ``train_state.json`` with the elapsed time (what a study's budget reads).

``--resume`` returns a complete fit as it is; a fit stopped by its time budget or killed is fitted again from the
start (a fit keeps no optimizer state; it takes minutes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from mddose.errors import MddoseError
from mddose.utils.fs import atomic_dir, atomic_write
from mddose.utils.log import logger


def _complete(last: Path) -> bool:
    """The fit in checkpoint ``last`` reached its end (not stopped by a budget or killed)."""
    try:
        return bool(json.loads((last / "train_state.json").read_text()).get("state", {}).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def fit_run(cfg, mcfg, out: Path, *, last: Path | None = None, resume: bool = False, progress: bool = True,
            skipped: list[tuple[str, str]] | None = None) -> Path:
    """Fit the model of train config ``cfg`` (resolved, its kind has a ``fit``; ``mcfg``: its model config) into
    ``out`` (``last``: the run's last checkpoint there, if any); returns ``out/best``."""
    from mddose.kinds import TrainData
    from mddose.models.registry import build_model
    from mddose.train.checkpoint import checkpoint_config, save_checkpoint
    from mddose.train.logs import RunLogger

    out = Path(out)
    kind = cfg.kind
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MddoseError(f"a {kind.words} is fitted in one process: run mddose train without torchrun")
    if resume and last is not None and _complete(last):
        logger.info("the fit in %s is complete", out)
        return out / "best" if (out / "best").is_dir() else last
    if resume:
        logger.info("a fitted %s keeps no optimizer state: fitting it again from the start", kind.words)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "train_config.json", "w") as fh:
        json.dump(cfg.to_dict(), fh, indent=1)
    log = RunLogger(Path(cfg.log_dir) if cfg.log_dir else out / "logs")
    try:
        fitted = kind.fit(cfg, mcfg, progress=progress,
                          on_round=lambda steps, loss, seconds: log.train(steps, 0, loss, 0.0, seconds))
        if skipped is not None:
            skipped.extend(fitted.skipped)
        model = build_model(dataclasses.replace(mcfg, **fitted.config))
        model.load_state_dict({k: torch.as_tensor(v) for k, v in fitted.state.items()})
        model.eval()
        if fitted.val_patients and cfg.val_every:
            data = TrainData(train=None, val_patients=fitted.val_patients, data_config=cfg.inputs,
                             channels=cfg.inputs.channels)
            score = kind.objective(cfg).validator(cfg, data, torch.device("cpu"))(model)
            log.val(fitted.steps, 0, score, fitted.seconds)
            logger.info("validation dose score (mean absolute error in the possible-dose mask): %.3f Gy", score)
    finally:
        log.close()
    meta = checkpoint_config(model, kind=kind.name, data_config={kind.data_key: cfg.inputs.to_dict()},
                             train_config=cfg.to_dict(inputs=False), step=fitted.steps, epoch=0)
    save_checkpoint(out / "last", model=model, ema=model, config=meta,
                    state={"step": fitted.steps, "elapsed": round(fitted.seconds, 3), "rows": fitted.rows,
                           "complete": fitted.complete})
    with atomic_dir(out / "best", force=True) as tmp:
        for f in (out / "last").iterdir():
            shutil.copy2(f, tmp / f.name)
    logger.info("fitted %d rounds in %.0f s: %s", fitted.steps, fitted.seconds, out / "best")
    return out / "best"
