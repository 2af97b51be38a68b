"""The training loop: the objective of the model's kind (:meth:`mddose.kinds.base.ModelKind.objective`: the DDPM
loss with an ε-, v- or x0-target for diffusion models, masked L1 for 3D regression), Adam with the learning rate of
:meth:`~mddose.train.config.TrainConfig.lr_at` (schedule over the run's total steps, optional linear warm-up),
EMA, gradient clipping, AMP (CUDA), DDP, exact resume.

Output directory layout::

    out/last/        checkpoint written every epoch (and every ``checkpoint_every`` steps, and at the end)
    out/best/        copy of the checkpoint with the lowest validation score (Gy)
    out/logs/        train.csv (step, epoch, loss, lr, time), val.csv, tensorboard/ (if available)
    out/train_config.json

Exact resume: everything that influences the next step is in the checkpoint (weights, EMA, Adam
state, GradScaler, torch/NumPy/Python RNG states, the noise generator, epoch and position in the
epoch); data order and augmentation are functions of ``(seed, epoch, index)``. A run killed at any
moment and continued with ``resume=True`` therefore reaches bitwise the same weights on CPU as an
uninterrupted one (on CUDA up to non-deterministic kernels).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mddose.errors import MddoseError
from mddose.train.checkpoint import checkpoint_config, load_train_state, read_checkpoint_config, save_checkpoint
from mddose.train.config import GRID_FIELDS, RESUME_MAY_CHANGE, TrainConfig, load_train_config, resume_differences
from mddose.train.distributed import (DistInfo, EpochBatchSampler, all_reduce_mean, barrier, cleanup_distributed,
                                      init_distributed)
from mddose.train.ema import EMA
from mddose.train.logs import RunLogger
from mddose.utils.device import pick_device
from mddose.utils.fs import atomic_dir, atomic_write
from mddose.utils.log import logger


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_last(out_dir: Path) -> Path | None:
    """``out/last``, or the previous one left by a run killed while replacing it."""
    last = out_dir / "last"
    if (last / "config.json").is_file():
        return last
    olds = sorted(out_dir.glob(".last.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in olds if (p / "config.json").is_file()), None)


def check_resume_config(cfg: TrainConfig, checkpoint: Path) -> None:
    """Refuse to resume the run of ``checkpoint`` with a config that differs from the run's in anything but
    :data:`~mddose.train.config.RESUME_MAY_CHANGE` (the budget, and settings that do not change what is computed).

    The run's config is the resolved train config saved in the checkpoint's ``config.json`` (the same as the
    run's ``train_config.json`` but for the budget), or ``train_config.json`` beside it for a checkpoint without
    one. ``cfg`` is resolved (the caller's, once).
    """
    saved = read_checkpoint_config(checkpoint).get("train_config")
    source = checkpoint / "config.json"
    if not saved:
        source = checkpoint.parent / "train_config.json"
        if not source.is_file():
            return
        from mddose.utils.config import read_json_object
        saved = read_json_object(source, "train config")
    diffs = resume_differences(saved, cfg)
    if diffs:
        raise MddoseError(f"cannot resume: the config differs from the run's ({source}) in {'; '.join(diffs)}; "
                          f"only {', '.join(RESUME_MAY_CHANGE)} may change on --resume", checkpoint.parent)


class Trainer:
    """Runs the loop for one model and dataset (items ``{"cond": (C,H,W), "dose": (1,H,W), ...}``).

    Args:
        cfg: the train config (recipe resolved here).
        model: the model (a denoiser ``model(x_t, t, cond)`` or a 3D regressor ``model(cond)``, as the
            objective says), freshly initialised (seed it before building).
        train_ds: training dataset; an object with ``set_epoch`` gets it called every epoch.
        out_dir: output directory (see module docstring).
        validate: ``f(ema_model) -> score`` (lower is better), run on rank 0; None = no best/ selection.
        dist: process-group info (default: single process on ``cfg.device``).
    The model's kind (its registry entry's, else ``cfg.model``'s) gives the objective and what the checkpoints
    hold besides the weights: the input config ``cfg.inputs`` under the kind's key, the train config (without
    it), and the kind's own entries (the diffusion schedule).
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module, train_ds: Dataset, out_dir: str | Path, *,
                 validate: Callable[[nn.Module], float] | None = None, progress: bool = True,
                 dist: DistInfo | None = None):
        from mddose.models.registry import ModelConfig, kind_of
        self.cfg = cfg.resolved()
        self.dist = dist or DistInfo(device=pick_device(self.cfg.device, what="device"))
        self.device = self.dist.device
        self.out = Path(out_dir)
        self.validate, self.progress = validate, progress
        self.train_ds = train_ds
        mcfg = getattr(model, "config", None)
        try:
            self.kind = kind_of(mcfg) if isinstance(mcfg, ModelConfig) else self.cfg.kind
        except KeyError:             # no config, or one of an unregistered class: go by the train config
            self.kind = self.cfg.kind
        self.objective = self.kind.objective(self.cfg)
        self.model = model.to(self.device).train()
        self.ema = EMA(self.model, self.cfg.ema_decay, self.cfg.ema_warmup)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                    amsgrad=self.cfg.amsgrad)
        cuda = self.device.type == "cuda"
        self.amp = bool(self.cfg.amp and cuda)
        self.amp_dtype = torch.float16 if self.cfg.amp_dtype == "float16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16) \
            if cuda else None
        self.noise_gen = torch.Generator().manual_seed(self.cfg.seed + 7919)
        self.net: nn.Module = self.objective.train_module(self.model)
        if self.dist.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if cuda else None)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.elapsed = 0.0
        self._resumed_step: int | None = None
        self.init_record: dict | None = None     # a fine-tuned run: the checkpoint it started from
        self.schedule_steps: int | None = None   # the run's total steps, once known (see _plan)
        self._rate_origin: tuple[int, float] = (0, 0.0)

    @property
    def diffusion(self):
        """The :class:`~mddose.diffusion.GaussianDiffusion` of a diffusion objective (None for regression)."""
        return getattr(self.objective, "diffusion", None)

    # ------------------------------------------------------------------ state
    def _state(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "best_score": self.best_score, "best_step": self.best_step, "elapsed": self.elapsed,
                "ema_updates": self.ema.num_updates, "world": self.dist.world,
                "schedule_steps": self.schedule_steps}

    def start_from(self, state_dict: dict[str, torch.Tensor], record: dict) -> None:
        """Fine-tuning: the model starts from ``state_dict`` (:func:`mddose.train.finetune.load_init`), with the EMA
        reset to it; the optimizer, learning-rate schedule and step count stay fresh. ``record`` (where the weights
        came from) goes into every checkpoint's config.json as ``"init"``."""
        from mddose.train.checkpoint import load_state_dict_checked

        load_state_dict_checked(self.model, state_dict, Path(record.get("path", "--init")))
        self.ema = EMA(self.model, self.cfg.ema_decay, self.cfg.ema_warmup)
        self.init_record = dict(record)
        if self.dist.is_main:
            logger.info("fine-tuning from %s (step %s): fresh optimizer and schedule", record.get("checkpoint"),
                        record.get("step"))

    def resume(self, path: str | Path | None = None) -> bool:
        """Load ``out/last`` (or ``path``); returns False if there is nothing to resume."""
        path = Path(path) if path else find_last(self.out)
        if path is None:
            return False
        check_resume_config(self.cfg, path)
        st = load_train_state(path, model=self.model, ema=self.ema.module, optimizer=self.opt,
                              scaler=self.scaler, noise_gen=self.noise_gen)
        self.step, self.epoch, self.batch_in_epoch = int(st["step"]), int(st["epoch"]), int(st["batch_in_epoch"])
        self.best_score, self.best_step = st.get("best_score"), st.get("best_step")
        self.elapsed, self.ema.num_updates = float(st.get("elapsed", 0.0)), int(st.get("ema_updates", self.step))
        self.schedule_steps = st.get("schedule_steps")
        self.init_record = read_checkpoint_config(path).get("init")
        self._resumed_step = self.step
        if self.dist.is_main:
            logger.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)
        return True

    def save(self, name: str = "last") -> Path | None:
        """Write ``out/<name>`` (rank 0 only)."""
        if not self.dist.is_main:
            return None
        kind = self.kind
        cfg = checkpoint_config(self.model, kind=kind.name, data_config={kind.data_key: self.cfg.inputs.to_dict()},
                                train_config=self.cfg.to_dict(inputs=False), step=self.step, epoch=self.epoch,
                                **kind.checkpoint_meta(self.cfg),
                                **({"init": self.init_record} if self.init_record else {}))
        return save_checkpoint(self.out / name, model=self.model, ema=self.ema.module, config=cfg,
                               optimizer=self.opt, scaler=self.scaler, noise_gen=self.noise_gen, state=self._state())

    def _copy_best(self) -> None:
        with atomic_dir(self.out / "best", force=True) as tmp:
            for f in (self.out / "last").iterdir():
                shutil.copy2(f, tmp / f.name)

    # ------------------------------------------------------------------ one step
    def _batch_size(self) -> int:
        return EpochBatchSampler(len(self.train_ds), self.cfg.batch_size, self.cfg.seed, 0, 0, 0,
                                 self.dist.world).batch

    def train_step(self, batch: dict, global_batch: int) -> float:
        """One optimizer step on this rank's part of a global batch; returns the global mean loss."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            loss = self.objective.loss(self.net, batch, self.noise_gen, global_batch, self.dist.rank, self.device)
        value = float(all_reduce_mean(loss.detach().float(), self.dist))
        if not math.isfinite(value):
            raise MddoseError(f"training diverged: loss is {'NaN' if math.isnan(value) else value} "
                              f"at step {self.step + 1}")
        scaling = self.scaler is not None and self.scaler.is_enabled()
        (self.scaler.scale(loss) if scaling else loss).backward()
        if self.cfg.grad_clip:
            if scaling:
                self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if scaling:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step += 1
        self.batch_in_epoch += 1
        return value

    # ------------------------------------------------------------------ validation
    def run_validation(self, logger_: RunLogger) -> bool:
        """Validate the EMA model on rank 0; update the best score (the caller saves). True if improved."""
        improved = False
        if self.validate is None:
            return improved
        if self.dist.is_main:
            score = float(self.validate(self.ema.module))
            logger_.val(self.step, self.epoch, score, self.elapsed)
            logger.info("step %d epoch %d: validation MAE %.4f Gy", self.step, self.epoch, score)
            if math.isfinite(score) and (self.best_score is None or score < self.best_score):
                self.best_score, self.best_step = score, self.step
                improved = True
        barrier(self.dist)
        return improved

    # ------------------------------------------------------------------ loop
    def _loader(self, start: int) -> DataLoader:
        if hasattr(self.train_ds, "set_epoch"):
            self.train_ds.set_epoch(self.epoch)
        sampler = EpochBatchSampler(len(self.train_ds), self.cfg.batch_size, self.cfg.seed, self.epoch, start,
                                    self.dist.rank, self.dist.world)
        return DataLoader(self.train_ds, batch_sampler=sampler, num_workers=self.cfg.num_workers,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.cfg.seed + self.epoch))

    #: steps timed before a time budget is turned into a step count (the first steps are slower: warm-up)
    RATE_STEPS = 10
    #: the first steps of a run are slow (allocator, kernel compilation): left out of the measured rate
    #: (the timing warm-up, unrelated to the learning-rate warm-up ``cfg.warmup_steps``)
    WARMUP_STEPS = 2
    #: the estimate is provisional until this fraction of the budget has passed, then fixed
    FREEZE_FRACTION = 0.1

    def _plan(self, bound: int, start_step: int, t0: float, now: float) -> int:
        """The run's total optimizer steps, which the learning-rate schedule follows.

        ``bound``: the step limit from ``epochs`` and ``max_steps``. Without a time budget it is the total.
        With one, ``step + remaining budget / seconds per step`` (capped by ``bound``), the rate measured over
        this invocation's steps after :attr:`WARMUP_STEPS`. The estimate is provisional (recomputed every step;
        early in a run every schedule is still near its start) until both :attr:`RATE_STEPS` steps and
        :attr:`FREEZE_FRACTION` of the budget have passed; then it is fixed and kept in the checkpoint, so that
        a resumed run follows the same schedule.
        """
        if self.schedule_steps is not None:
            return min(self.schedule_steps, bound)
        budget = self.cfg.time_budget_s
        if budget is None:
            return bound
        done = self.step - start_step
        if done <= self.WARMUP_STEPS:
            self._rate_origin = (self.step, now)
            return bound if now - t0 < budget or done == 0 else self._freeze(self.step)   # ≥ 1 step always
        s0, w0 = self._rate_origin
        rate = (now - w0) / max(self.step - s0, 1)
        left = max(budget - (now - t0), 0.0)
        total = int(min(bound, self.step + math.floor(left / rate) if rate > 0 else bound))
        if done >= self.RATE_STEPS and now - t0 >= self.FREEZE_FRACTION * budget or left <= 0:
            return self._freeze(total)
        return max(total, self.step + 1)

    def _freeze(self, total: int) -> int:
        self.schedule_steps = int(total)
        logger.info("time budget: about %d steps in all; the learning-rate schedule follows that", self.schedule_steps)
        return self.schedule_steps

    def fit(self) -> Path:
        """Train until ``epochs`` / ``max_steps`` / ``time_budget_s``; returns ``out/best`` (``out/last``
        without validation). On a non-finite loss raises MddoseError; the last checkpoint stays."""
        cfg = self.cfg
        gb = self._batch_size()
        spe = EpochBatchSampler.steps_per_epoch(len(self.train_ds), gb)
        bound = cfg.epochs * spe if cfg.max_steps is None else min(cfg.epochs * spe, cfg.max_steps)
        main = self.dist.is_main
        if main:
            with atomic_write(self.out / "train_config.json", "w") as fh:
                json.dump(cfg.to_dict(), fh, indent=1)
        log = RunLogger(Path(cfg.log_dir) if cfg.log_dir else self.out / "logs", self._resumed_step, enabled=main)
        from tqdm.auto import tqdm
        start, start_step = time.monotonic(), self.step
        total = self._plan(bound, start_step, start, start)
        bar = tqdm(total=total, initial=min(self.step, total), disable=not (self.progress and main),
                   desc="training", unit="step", dynamic_ncols=True)
        last_saved, last_val = None, None
        t_prev = start
        try:
            while self.epoch < cfg.epochs and self.step < total:
                stop = False
                for batch in self._loader(self.batch_in_epoch):
                    lr = cfg.lr_at(self.step, total)
                    for g in self.opt.param_groups:
                        g["lr"] = lr
                    loss = self.train_step(batch, gb)
                    now = time.monotonic()
                    self.elapsed += now - t_prev
                    t_prev = now
                    log.train(self.step, self.epoch, loss, lr, self.elapsed)
                    new_total = self._plan(bound, start_step, start, now)
                    if new_total != total:
                        total = new_total
                        bar.total = total
                        bar.refresh()
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2g}", epoch=self.epoch)
                    end_epoch = self.batch_in_epoch >= spe
                    if end_epoch:
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    stop = self.step >= total or (cfg.time_budget_s is not None and now - start >= cfg.time_budget_s)
                    do_val = (end_epoch and cfg.val_every and self.epoch % cfg.val_every == 0) or stop
                    improved = False
                    if do_val and last_val != self.step:
                        improved = self.run_validation(log)
                        last_val = self.step
                    if end_epoch or stop or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                        self.save("last")
                        last_saved = self.step
                        if main and improved:
                            self._copy_best()
                    if stop or end_epoch:
                        break
                if stop:
                    break
            if last_saved != self.step:
                self.save("last")
        finally:
            bar.close()
            log.close()
        barrier(self.dist)
        best = self.out / "best"
        return best if best.is_dir() else self.out / "last"


def model_config_for(cfg: TrainConfig, channels: int, grid: int | None = None):
    """The model config of a run: ``cfg.model`` + ``cfg.preset`` + ``in_channels`` + ``cfg.model_overrides``, with
    the data's ``grid`` (default: ``cfg.inputs.size``) in the config's ``image_size`` / ``grid_size`` field when
    it has one (the grid is the data's: ``model_overrides`` may not set it), and the residual form's input channel
    in ``residual_channel`` (from the inputs' ``residual``; nor may ``model_overrides`` set it)."""
    from mddose.models.registry import make_config
    mcfg = make_config(cfg.model, cfg.preset, **{"in_channels": channels, **cfg.model_overrides})
    grid = int(grid or cfg.inputs.size)
    mcfg = dataclasses.replace(mcfg, **{k: grid for k in GRID_FIELDS if hasattr(mcfg, k)})
    residual = getattr(cfg.inputs, "residual_channel", None)
    if residual is not None and not hasattr(mcfg, "residual_channel"):
        raise MddoseError(f"train config: {cfg.kind.section}.residual: model {cfg.model} has no residual form")
    return dataclasses.replace(mcfg, residual_channel=residual) if hasattr(mcfg, "residual_channel") else mcfg


def build_model_for(cfg: TrainConfig, channels: int, grid: int | None = None) -> nn.Module:
    """The model of a run, built from :func:`model_config_for`."""
    from mddose.models.registry import build_model
    return build_model(model_config_for(cfg, channels, grid))


def train(config: TrainConfig | str | Path, out_dir: str | Path, *, resume: bool = False,
          progress: bool = True, skipped: list[tuple[str, str]] | None = None,
          init: str | Path | None = None, init_name: str | None = None) -> Path:
    """Train from a config (object or JSON path) into ``out_dir``; returns the best checkpoint dir.

    Any registered model: its kind (:func:`mddose.models.registry.kind_of`) gives the data (slices for 2D
    diffusion models, volumes for 3D regression models), the objective and the validation score.
    ``resume=True`` continues from ``out_dir/last`` (refused when the config differs from the run's in
    anything but the budget: :func:`check_resume_config`); without it an existing run in ``out_dir`` is an
    error. Patients that cannot be used are skipped (:func:`mddose.utils.batch.skip_item`); ``skipped``, if given,
    receives their ``(path, message)`` (on rank 0). Under ``torchrun`` (WORLD_SIZE > 1) every rank runs this;
    only rank 0 writes. ``init``: fine-tune — start from the weights of this checkpoint folder (``init_name``: how
    the user named it, recorded with it), checked against the config before any data is read
    (:func:`mddose.train.finetune.load_init`); refused with ``resume``.
    """
    cfg = config if isinstance(config, TrainConfig) else load_train_config(config)
    cfg = cfg.resolved()                  # parsed and checked when it was built; the recipe filled here
    if resume and init is not None:
        raise MddoseError("--init starts a new run from trained weights; --resume continues a run: use one of them")
    out = Path(out_dir)
    last = find_last(out)
    if resume and last is None:
        raise MddoseError("nothing to resume: no checkpoint 'last' in this directory", out)
    if not resume and last is not None:
        raise MddoseError("already holds a training run; use --resume to continue or choose another --out", out)
    if resume:
        check_resume_config(cfg, last)      # before any data is read
    kind = cfg.kind
    mcfg = model_config_for(cfg, cfg.inputs.channels)   # validates model, preset, overrides before any data is read
    if kind.fit is not None:                            # fitted by its kind (a tree ensemble), not by gradient steps
        if init is not None:
            raise MddoseError(f"--init: a {kind.words} is fitted from the start, it cannot be fine-tuned")
        from mddose.train.fitted import fit_run
        return fit_run(cfg, mcfg, out, last=last, resume=resume, progress=progress, skipped=skipped)
    start = None
    if init is not None:
        from mddose.train.finetune import load_init
        start = load_init(init, cfg, mcfg, name=init_name)
    dist = init_distributed(cfg.device)
    try:
        data = kind.build_data(cfg, progress=progress and dist.is_main)
        if skipped is not None and dist.is_main:
            skipped.extend(data.skipped)
        seed_everything(cfg.seed)
        model = build_model_for(cfg, data.channels, data.grid)
        trainer = Trainer(cfg, model, data.train, out, progress=progress, dist=dist)
        if data.val_patients and cfg.val_every:
            trainer.validate = trainer.objective.validator(cfg, data, trainer.device)
        if start is not None:
            trainer.start_from(*start)
        if resume:
            trainer.resume()
        return trainer.fit()
    finally:
        cleanup_distributed(dist)
