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

Opt-in training levers (defaults = the behaviour before they existed; every one is a JSON key):

* ``"diffusion": {"prediction": "eps" | "v" | "x0"}`` — what the denoiser outputs (ε: the paper).
* ``"diffusion": {"loss_weighting": "uniform" | "min_snr", "min_snr_gamma": 5.0}`` — per-timestep loss weight,
  Min-SNR-γ (Hang et al. 2023; formulas in :mod:`mddose.diffusion.schedule`).
* ``"diffusion": {"loss_type": "mse" | "l1"}`` — norm of the loss (L1: mean absolute error, what the dose score
  measures and the OpenKBP baselines train with).
* ``"diffusion": {"mask_weight": w}`` — pixels outside the possible-dose mask weigh ``w`` in the loss (inside: 1),
  normalised by the weight sum; ``null`` (default) = every pixel alike. Needs the slices' ``"mask"`` item.
* ``"warmup_steps": N`` — linear learning-rate warm-up over the first N optimizer steps, on top of the schedule.
* ``"val_samples": K`` — samples per slice averaged when validating (the "more samples at prediction" lever).

The default is ``"paper"``. Measured on the shared OpenKBP patients at 8 minutes of CPU training per run (the
``ablation-cpu`` and ``levers-cpu`` studies, BENCHMARKS.md), the paper recipe with ``"lr": 2e-3``,
``"warmup_steps": 50`` and x0-prediction learns fastest; the CPU config ``openkbp-cpu`` (the shipped checkpoint's)
uses exactly that.

JSON example::

    {"model": "md-dose", "preset": "small", "slices": {"size": 64},
     "data": {"phantoms": {"n": 8, "seed": 0, "size": 64}}, "epochs": 5, "recipe": "public"}

Unknown keys (top level, in ``data``, ``data.phantoms``, ``diffusion``, ``slices`` or ``volume``) and values of
the wrong type or range (``"lr": "fast"``, ``"epochs": "10"``, ``true`` where a number is expected, NaN, a
negative ``grad_clip``, ``max_steps`` ≤ 0, ``checkpoint_every`` < 1, ...) raise one-line :class:`MddoseError`
messages naming the key and the file (:meth:`TrainConfig.check`).

``grad_clip``: the maximum global gradient norm; ``0`` turns clipping off (as ``null`` does when the recipe has
none), a negative value is refused (``clip_grad_norm_`` would turn the gradient around: gradient ascent).

On ``--resume`` the config may differ from the run's only in :data:`RESUME_MAY_CHANGE` (the budget, and
settings that do not change what is computed); anything else is refused (:func:`resume_differences`).
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
from mddose.utils.config import check_keys, dataclass_from_dict, read_json_object

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
#: fields a resumed run may change: its budget, and settings that do not change what is computed
RESUME_MAY_CHANGE = ("epochs", "max_steps", "time_budget_s", "device", "num_workers", "log_dir", "checkpoint_every")


@dataclass(frozen=True)
class PhantomsConfig:
    """``data.phantoms``: ``n`` training and ``val`` validation phantoms of ``size``² slices from ``seed``."""

    n: int = 8
    seed: int = 0
    size: int = 64
    val: int = 2


@dataclass(frozen=True)
class DataConfig:
    """Where the slices come from.

    ``train`` / ``val``: a directory of patient directories (or one patient), a text file listing
    patient paths one per line (relative to the list file), or a list of those (e.g. OpenKBP's
    ``train-pats`` and ``extra-train-pats``). ``phantoms``: ``{"n": N, "seed": S,
    "size": 64, "val": V}`` generates N training and V validation phantoms in memory (used when
    ``train`` is None). ``val_max_slices`` caps the validation slices (speed).
    """

    train: str | tuple[str, ...] | None = None
    val: str | tuple[str, ...] | None = None
    phantoms: dict[str, int] | None = None
    val_max_slices: int | None = 64


@dataclass(frozen=True)
class DiffusionConfig:
    """``diffusion``: the DDPM schedule and parameterisation, and how the training loss is weighted.

    ``prediction``: ``"eps"`` (the paper), ``"v"`` or ``"x0"``. ``loss_weighting``: ``"uniform"`` (Ho et al.'s
    simple loss) or ``"min_snr"`` (Min-SNR-γ with γ = ``min_snr_gamma``). ``mask_weight``: ``None`` (every pixel
    alike) or the loss weight of pixels outside the possible-dose mask (inside: 1), e.g. 0 or 0.1. ``loss_type``:
    ``"mse"`` (Ho et al.) or ``"l1"``.
    """

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    schedule: str = "linear"
    prediction: str = "eps"          # "eps" (the paper), "v" or "x0"
    loss_weighting: str = "uniform"  # "uniform" or "min_snr"
    min_snr_gamma: float = 5.0       # γ of min_snr
    mask_weight: float | None = None  # loss weight outside the possible-dose mask; None = no mask weighting
    loss_type: str = "mse"           # "mse" or "l1"

    def make_diffusion(self):
        """The :class:`~mddose.diffusion.GaussianDiffusion` of these settings (``mask_weight`` is the objective's:
        it needs the batch's mask, see :class:`mddose.train.objectives.DiffusionObjective`)."""
        from mddose.diffusion import GaussianDiffusion
        return GaussianDiffusion(**{k: v for k, v in dataclasses.asdict(self).items() if k != "mask_weight"})


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
    warmup_steps: int = 0                # linear lr warm-up over the first N optimizer steps (0 = none)
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
    val_samples: int = 1                 # samples per slice averaged at validation
    checkpoint_every: int | None = None  # steps; None = end of every epoch only
    log_dir: str | None = None           # None: <out>/logs
    max_steps: int | None = None
    time_budget_s: float | None = None

    # ------------------------------------------------------------------ recipe resolution
    def resolved(self) -> "TrainConfig":
        """A copy with every ``None`` recipe field filled from :data:`RECIPES`; validates values (:meth:`check`)."""
        self.check()
        recipe = {**RECIPE_DEFAULTS, **RECIPES[self.recipe]}
        fill = {k: v for k, v in recipe.items() if getattr(self, k) is None}
        cfg = dataclasses.replace(self, **fill)
        cfg.check()
        return cfg

    def check(self, where: str = "train config") -> "TrainConfig":
        """Validate every field's type and range (``None`` is allowed where a recipe fills it); returns self.

        Raises:
            MddoseError: one line naming ``where`` (the file), the key, the expectation and the value.
        """
        for k, typ in (("model", str), ("recipe", str), ("device", str), ("preset", (str, type(None))),
                       ("log_dir", (str, type(None)))):
            if not isinstance(getattr(self, k), typ):
                raise MddoseError(f"{where}: {k} must be a string, got {getattr(self, k)!r}")
        for k, choices in (("recipe", tuple(RECIPES)), ("lr_schedule", LR_SCHEDULES),
                           ("amp_dtype", ("bfloat16", "float16")), ("val_sampler", _samplers())):
            v = getattr(self, k)
            if v is None and k == "lr_schedule":        # from the recipe
                continue
            if not isinstance(v, str) or v not in choices:
                raise MddoseError(f"{where}: {k} must be one of {', '.join(choices)}, got {v!r}")
        for k in ("model_overrides", "slices", "volume"):
            if not isinstance(getattr(self, k), dict):
                raise MddoseError(f"{where}: '{k}' must be a JSON object, got {getattr(self, k)!r}")
        for k, lo, optional in (("epochs", 1, False), ("batch_size", 1, True), ("seed", None, False),
                                ("num_workers", 0, False), ("val_every", 0, False), ("val_steps", 1, False),
                                ("val_samples", 1, False), ("warmup_steps", 0, False),
                                ("checkpoint_every", 1, True), ("max_steps", 1, True)):
            if getattr(self, k) is not None or not optional:
                _need_int(k, getattr(self, k), lo, where)
        for k, limits in (("lr", {"above": 0}), ("lr_min", {"above": 0}), ("weight_decay", {"at_least": 0}),
                          ("ema_decay", {"at_least": 0, "below": 1}), ("time_budget_s", {"at_least": 0}),
                          ("grad_clip", {"at_least": 0, "hint": " (0 turns clipping off)"})):
            if getattr(self, k) is not None:
                _need_number(k, getattr(self, k), where, **limits)
        for k in ("amsgrad", "ema_warmup", "amp"):
            if getattr(self, k) is not None and not isinstance(getattr(self, k), bool):
                raise MddoseError(f"{where}: {k} must be true or false, got {getattr(self, k)!r}")
        self._check_sections(where)
        return self

    def _check_sections(self, where: str) -> None:
        """``data``, ``diffusion``, and the key names of ``slices`` / ``volume``."""
        d = self.data
        for k in ("train", "val"):
            v = getattr(d, k)
            ok = isinstance(v, (str, type(None))) or (isinstance(v, (tuple, list)) and v
                                                      and all(isinstance(x, str) for x in v))
            if not ok:
                raise MddoseError(f"{where}: data.{k} must be a path or a non-empty list of paths, got {v!r}")
        if d.phantoms is not None:
            phantoms_config(d.phantoms, where)
        if d.val_max_slices is not None:
            _need_int("data.val_max_slices", d.val_max_slices, 1, where)
        diff = self.diffusion
        _need_int("diffusion.num_timesteps", diff.num_timesteps, 1, where)
        for k in ("beta_start", "beta_end"):
            _need_number(f"diffusion.{k}", getattr(diff, k), where, above=0, below=1)
        for k in ("schedule", "prediction", "loss_weighting", "loss_type"):
            if not isinstance(getattr(diff, k), str):
                raise MddoseError(f"{where}: diffusion.{k} must be a string, got {getattr(diff, k)!r}")
        _need_number("diffusion.min_snr_gamma", diff.min_snr_gamma, where, above=0)
        if diff.mask_weight is not None:
            _need_number("diffusion.mask_weight", diff.mask_weight, where, at_least=0,
                         hint=" (null: no mask weighting)")
        try:
            diff.make_diffusion()
        except MddoseError as exc:
            raise MddoseError(f"{where}: {exc}") from None
        from mddose.data.inputs.slices import SliceConfig
        from mddose.data.inputs.volume import VolumeConfig
        for key, cls in (("slices", SliceConfig), ("volume", VolumeConfig)):
            check_keys(getattr(self, key), (f.name for f in dataclasses.fields(cls)), where, f"{key}.")

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate of the (0-based) optimizer ``step`` of a run of ``total_steps`` steps.

        ``constant``: ``lr``. ``half-linear`` (paper): ``lr`` for the first half of the steps, then linear
        down to ``lr_min`` at the last step. ``cosine`` (C3D): ``lr_min + (lr - lr_min)·(1 + cos(π·s/(N-1)))/2``.

        ``warmup_steps`` = W > 0 multiplies that by ``min(1, (step + 1) / W)``: a linear ramp from ``lr/W`` at
        step 0 to the schedule's own value from step W − 1 on, while the schedule keeps following ``total_steps``.
        A function of the step only, so an exact resume stays exact.
        """
        lr = self._schedule_lr(step, total_steps)
        if self.warmup_steps and step + 1 < self.warmup_steps:
            return lr * (step + 1) / self.warmup_steps
        return lr

    def _schedule_lr(self, step: int, total_steps: int) -> float:
        """:meth:`lr_at` before the warm-up."""
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
        """Build from a JSON object and :meth:`check` it; unknown keys or bad values → one-line
        :class:`MddoseError` naming the key and ``where``."""
        if not isinstance(d, dict):
            raise MddoseError(f"{where}: a train config must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        for key, sub in (("data", DataConfig), ("diffusion", DiffusionConfig)):
            if key in d:
                d[key] = dataclass_from_dict(sub, d[key], where, prefix=f"{key}.")
        return dataclass_from_dict(cls, d, where).check(where)


def phantoms_config(d: Any, where: str = "train config") -> PhantomsConfig:
    """The validated :class:`PhantomsConfig` of a ``data.phantoms`` object (``where``: the file, in messages)."""
    pc = dataclass_from_dict(PhantomsConfig, d, where, prefix="data.phantoms.")
    for k, lo in (("n", 1), ("seed", 0), ("size", 32), ("val", 0)):
        _need_int(f"data.phantoms.{k}", getattr(pc, k), lo, where)
    return pc


def resume_differences(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """``"key (old → new)"`` for every field outside :data:`RESUME_MAY_CHANGE` where the resolved ``cfg``
    differs from ``saved`` (the resolved config dict of the run being resumed; missing fields: defaults)."""
    old = json.loads(json.dumps(TrainConfig.from_dict(saved, "the run's saved train config").to_dict()))
    new = json.loads(json.dumps(cfg.to_dict()))
    for d in (old, new):                 # the same folder, however spelled (relative to the current directory)
        for k in ("train", "val"):
            if d["data"].get(k):
                d["data"][k] = os.path.abspath(d["data"][k])
    out = []
    for k in new:
        if k not in RESUME_MAY_CHANGE and old.get(k) != new[k]:
            if isinstance(new[k], dict) and isinstance(old.get(k), dict):
                out += [f"{k}.{s} ({old[k].get(s)!r} → {new[k].get(s)!r})"
                        for s in sorted(set(old[k]) | set(new[k])) if old[k].get(s) != new[k].get(s)]
            else:
                out.append(f"{k} ({old.get(k)!r} → {new[k]!r})")
    return out


def _need_int(key: str, v: Any, lo: int | None, where: str) -> None:
    """``v`` must be an integer (not a bool, not a string) ≥ ``lo``."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise MddoseError(f"{where}: {key} must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise MddoseError(f"{where}: {key} must be >= {lo}, got {v}")


def _need_number(key: str, v: Any, where: str, *, above: float | None = None, below: float | None = None,
                 at_least: float | None = None, hint: str = "") -> None:
    """``v`` must be a finite number (not a bool, not a string), ``> above``, ``< below``, ``>= at_least``."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise MddoseError(f"{where}: {key} must be a number, got {v!r}")
    for ok, rel, bound in ((above is None or v > above, ">", above),
                           (at_least is None or v >= at_least, ">=", at_least),
                           (below is None or v < below, "<", below)):
        if not ok:
            raise MddoseError(f"{where}: {key} must be {rel} {bound}{hint}, got {v}")


def _samplers() -> tuple[str, ...]:
    from mddose.diffusion import SAMPLERS
    return tuple(SAMPLERS)


def load_train_config(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """Read a JSON train config (unknown keys rejected) and apply top-level ``overrides`` (None = keep).

    Relative ``data.train`` / ``data.val`` paths are resolved against the current directory first,
    then against the config file's directory, and made absolute (so that the run's saved config names its
    data wherever it is resumed from).
    """
    path = Path(path)
    raw = read_json_object(path, "config file")
    cfg = TrainConfig.from_dict(raw, where=str(path))
    data = cfg.data
    fixed = {}
    def resolve(v: str) -> str:
        if Path(v).is_absolute():
            return v
        found = next((c for c in (Path(v), path.parent / v) if c.exists()), None)
        return os.path.abspath(found) if found is not None else v

    for k in ("train", "val"):
        v = getattr(data, k)
        if isinstance(v, str) and resolve(v) != v:
            fixed[k] = resolve(v)
        elif isinstance(v, tuple) and tuple(map(resolve, v)) != v:
            fixed[k] = tuple(map(resolve, v))
    if fixed:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(data, **fixed))
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides).check(str(path))
    return cfg


def builtin_config(name: str) -> Path:
    """Path of a training config shipped in ``mddose/configs`` (``"demo"``, ``"openkbp"``, ``"openkbp-cpu"``,
    ``"openkbp-c3d"``, ...)."""
    root = Path(__file__).resolve().parents[1] / "configs"
    p = root / f"{name}.json"
    if not p.is_file():
        known = ", ".join(sorted(q.stem for q in root.glob("*.json")))
        raise MddoseError(f"--config: no config file and no built-in config named {name!r} (built-in: {known})")
    return p
