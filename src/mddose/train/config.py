"""Training configuration: a frozen, JSON-serialisable :class:`TrainConfig` and named recipes.

Recipes (``recipe`` field) fill every field left at ``None``:

* ``"paper"`` — MD-Dose paper, Sec. 2.3: batch 16, Adam, lr 1e-2 constant for the first half of the
  run, then decayed linearly down to 1e-4 at its end (the paper decays at the start of every epoch; we
  decay every step, so that a run ended by ``max_steps`` or a time budget decays too); the paper
  mentions no EMA and no gradient clipping (ema_decay 0 = EMA weights equal the raw weights).
* ``"public"`` — the authors' public code: batch 26, constant lr 1e-4, EMA 0.9999, grad clipping 1.0.
* ``"c3d"`` — C3D's published optimiser (Liu et al. 2021, code LSL000UD/RTDosePrediction): batch 2,
  Adam with AMSGrad, lr 3e-4, weight decay 3e-5 (L2, as their trainer applies it), cosine decay per
  iteration down to 1e-7; used for C3D and HD-UNet.

Every learning-rate schedule is a function of the step and of the run's total optimizer steps
(:meth:`TrainConfig.lr_at`); the trainer works the total out from ``epochs``, ``max_steps`` and, for a
time budget, from the measured step rate (see :mod:`mddose.train.trainer`).

The default is ``"paper"``: on the shared OpenKBP patients (``benchmarks/compare_recipes.sh``: md-dose
``small``, 64² slices, 4 epochs each on a 2-core CPU) it reached a validation dose score of 14.1 Gy
against 17.2 Gy for ``"public"`` (see BENCHMARKS.md). The demo config keeps ``"public"`` with lr 5e-4.

JSON example::

    {"model": "md-dose", "preset": "small", "slices": {"size": 64},
     "data": {"phantoms": {"n": 8, "seed": 0, "size": 64}}, "epochs": 5, "recipe": "public"}

Unknown keys (top level, in ``data`` or ``diffusion``) raise :class:`MddoseError` naming key and file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mddose.errors import MddoseError

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"batch_size": 16, "lr": 1e-2, "lr_schedule": "half-linear", "lr_min": 1e-4,
              "ema_decay": 0.0, "grad_clip": None},
    "public": {"batch_size": 26, "lr": 1e-4, "lr_schedule": "constant", "lr_min": 1e-4,
               "ema_decay": 0.9999, "grad_clip": 1.0},
    "c3d": {"batch_size": 2, "lr": 3e-4, "lr_schedule": "cosine", "lr_min": 1e-7, "weight_decay": 3e-5,
            "amsgrad": True, "ema_decay": 0.0, "grad_clip": None},
}
#: Fields every recipe may leave out, and their value then.
RECIPE_DEFAULTS: dict[str, Any] = {"weight_decay": 0.0, "amsgrad": False}
LR_SCHEDULES = ("constant", "half-linear", "cosine")


@dataclass(frozen=True)
class DataConfig:
    """Where the slices come from.

    ``train`` / ``val``: a directory of patient directories (or one patient), or a text file listing
    patient paths one per line (relative to the list file). ``phantoms``: ``{"n": N, "seed": S,
    "size": 64, "val": V}`` generates N training and V validation phantoms in memory (used when
    ``train`` is None). ``val_max_slices`` caps the validation slices (speed).
    """

    train: str | None = None
    val: str | None = None
    phantoms: dict[str, int] | None = None
    val_max_slices: int | None = 64


@dataclass(frozen=True)
class DiffusionConfig:
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    schedule: str = "linear"
    prediction: str = "eps"          # "eps" (the paper) or "v"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs (see module docstring); ``None`` = "from the recipe"."""

    model: str = "md-dose"
    preset: str | None = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    slices: dict[str, Any] = field(default_factory=dict)          # SliceConfig fields (2D models)
    volume: dict[str, Any] = field(default_factory=dict)          # VolumeConfig fields (3D models)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    recipe: str = "paper"
    epochs: int = 100
    batch_size: int | None = None        # global batch (split across DDP ranks)
    lr: float | None = None
    lr_schedule: str | None = None       # "constant" | "half-linear" (paper) | "cosine" (C3D)
    lr_min: float | None = None
    weight_decay: float | None = None    # Adam's L2 weight decay
    amsgrad: bool | None = None
    ema_decay: float | None = None
    ema_warmup: bool = True              # effective decay min(decay, (1+n)/(10+n)) after n updates
    grad_clip: float | None = None       # None: recipe; 0: off
    amp: bool = True                     # CUDA only
    amp_dtype: str = "bfloat16"          # "bfloat16" | "float16" (float16 uses a GradScaler)
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"                 # "auto" | "cpu" | "cuda" | "cuda:N"
    val_every: int = 1                   # epochs; 0 = never
    val_sampler: str = "ddim"
    val_steps: int = 10
    checkpoint_every: int | None = None  # steps; None = end of every epoch only
    log_dir: str | None = None           # None: <out>/logs
    max_steps: int | None = None
    time_budget_s: float | None = None

    # ------------------------------------------------------------------ recipe resolution
    def resolved(self) -> "TrainConfig":
        """A copy with every ``None`` recipe field filled from :data:`RECIPES`; validates values."""
        if self.recipe not in RECIPES:
            raise MddoseError(f"train config: unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        recipe = {**RECIPE_DEFAULTS, **RECIPES[self.recipe]}
        fill = {k: v for k, v in recipe.items() if getattr(self, k) is None}
        cfg = dataclasses.replace(self, **fill)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        def bad(msg: str):
            raise MddoseError(f"train config: {msg}")
        if self.lr_schedule not in LR_SCHEDULES:
            bad(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        for k in ("epochs", "batch_size"):
            if not (isinstance(getattr(self, k), int) and getattr(self, k) >= 1):
                bad(f"{k} must be a positive integer, got {getattr(self, k)!r}")
        if not (self.lr and self.lr > 0 and self.lr_min and self.lr_min > 0):
            bad(f"lr and lr_min must be positive, got {self.lr}, {self.lr_min}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            bad(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not isinstance(self.amsgrad, bool):
            bad(f"amsgrad must be true or false, got {self.amsgrad!r}")
        if not 0 <= self.ema_decay < 1:
            bad(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.amp_dtype not in ("bfloat16", "float16"):
            bad(f"amp_dtype must be bfloat16 or float16, got {self.amp_dtype!r}")

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate of the (0-based) optimizer ``step`` of a run of ``total_steps`` steps.

        ``constant``: ``lr``. ``half-linear`` (paper): ``lr`` for the first half of the steps, then linear
        down to ``lr_min`` at the last step. ``cosine`` (C3D): ``lr_min + (lr - lr_min)·(1 + cos(π·s/(N-1)))/2``.
        """
        lr, lo = float(self.lr), float(self.lr_min)
        if self.lr_schedule == "constant" or total_steps <= 1:
            return lr
        frac = min(max(step / (total_steps - 1), 0.0), 1.0)
        if self.lr_schedule == "cosine":
            return lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * frac))
        if frac <= 0.5:
            return lr
        return lr + (frac - 0.5) / 0.5 * (lo - lr)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "train config") -> "TrainConfig":
        """Build from a dict; unknown keys → :class:`MddoseError` naming the key and ``where``."""
        if not isinstance(d, dict):
            raise MddoseError(f"{where}: expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        _check_keys(d, cls, where, "")
        for key, sub in (("data", DataConfig), ("diffusion", DiffusionConfig)):
            if key in d:
                if not isinstance(d[key], dict):
                    raise MddoseError(f"{where}: '{key}' must be an object")
                _check_keys(d[key], sub, where, f"{key}.")
                d[key] = sub(**d[key])
        for key in ("model_overrides", "slices", "volume"):
            if key in d and not isinstance(d[key], dict):
                raise MddoseError(f"{where}: '{key}' must be an object")
        return cls(**d)


def _check_keys(d: dict, cls, where: str, prefix: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise MddoseError(f"{where}: unknown key(s) {', '.join(prefix + k for k in unknown)}")


def load_train_config(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """Read a JSON train config (unknown keys rejected) and apply top-level ``overrides`` (None = keep).

    Relative ``data.train`` / ``data.val`` paths are resolved against the current directory first,
    then against the config file's directory.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise MddoseError("config file not found", path) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise MddoseError(f"cannot read JSON config: {exc}", path) from None
    cfg = TrainConfig.from_dict(raw, where=str(path))
    data = cfg.data
    fixed = {}
    for k in ("train", "val"):
        v = getattr(data, k)
        if v and not Path(v).is_absolute() and not Path(v).exists() and (path.parent / v).exists():
            fixed[k] = str(path.parent / v)
    if fixed:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(data, **fixed))
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg


def builtin_config(name: str) -> Path:
    """Path of a config shipped in ``mddose/configs`` (``"demo"``, ``"openkbp"``)."""
    p = Path(__file__).resolve().parents[1] / "configs" / f"{name}.json"
    if not p.is_file():
        raise MddoseError(f"no built-in config named {name!r}")
    return p
