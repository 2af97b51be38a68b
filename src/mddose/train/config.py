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

Parsed once, into types: :meth:`TrainConfig.from_dict` turns the JSON object into frozen dataclasses — ``data``
(:class:`DataConfig`, its ``phantoms`` a :class:`~mddose.data.sources.PhantomSplit`), ``diffusion``
(:class:`~mddose.diffusion.config.DiffusionConfig`) and the model kind's input config (``inputs``: a
:class:`~mddose.data.inputs.slices.SliceConfig` read from the ``slices`` section of a 2D model, a
:class:`~mddose.data.inputs.volume.VolumeConfig` from the ``volume`` section of a 3D one; the section of another
kind is refused) — each checked once, when it is built (``__post_init__``), with one default per field. Unknown
keys and values of the wrong type or range (``"lr": "fast"``, ``"epochs": "10"``, ``true`` where a number is
expected, NaN, a negative ``grad_clip``, ``max_steps`` ≤ 0, ``checkpoint_every`` < 1, ...) raise one-line
:class:`MddoseError` messages naming the key and the file.

The grid is the data's: ``slices.size`` / ``volume.size`` (a 3D model's preset recommends its ``grid_size`` as the
default of ``volume.size``); the model config's ``image_size`` / ``grid_size`` is filled from it, and
``model_overrides`` may not set it.

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

from mddose.data.sources import PhantomSplit
from mddose.diffusion.config import DiffusionConfig
from mddose.errors import MddoseError
from mddose.utils.builtin import builtin_configs
from mddose.utils.config import check_finite, check_number, dataclass_from_dict, read_json_object

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
#: model config fields that hold the data's grid (filled from the input config's ``size``)
GRID_FIELDS = ("image_size", "grid_size")
WHERE = "train config"


@dataclass(frozen=True)
class DataConfig:
    """Where the patients come from.

    ``train`` / ``val``: a directory of patient directories (or one patient), a text file listing
    patient paths one per line (relative to the list file), or a list of those (e.g. OpenKBP's
    ``train-pats`` and ``extra-train-pats``). ``phantoms``: a :class:`~mddose.data.sources.PhantomSplit`
    (JSON ``{"train": N, "val": V, "size": 64, "seed": S}``) of phantoms generated in memory (used when ``train``
    is None). ``val_max_slices`` caps the validation slices (speed).
    """

    train: str | tuple[str, ...] | None = None
    val: str | tuple[str, ...] | None = None
    phantoms: PhantomSplit | None = None
    val_max_slices: int | None = 64

    def __post_init__(self) -> None:
        for k in ("train", "val"):
            v = getattr(self, k)
            if isinstance(v, list):
                object.__setattr__(self, k, v := tuple(v))
            ok = isinstance(v, (str, type(None))) or (isinstance(v, tuple) and v and all(isinstance(x, str) for x in v))
            if not ok:
                raise MddoseError(f"{WHERE}: data.{k} must be a path or a non-empty list of paths, got {v!r}")
        if self.phantoms is not None:
            object.__setattr__(self, "phantoms", PhantomSplit.from_dict(self.phantoms, WHERE))
        if self.val_max_slices is not None:
            check_number(WHERE, "data.val_max_slices", self.val_max_slices, integer=True, at_least=1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: (key, minimum, may be None) of every integer field of :class:`TrainConfig`
_INTS = (("epochs", 1, False), ("batch_size", 1, True), ("seed", None, False), ("num_workers", 0, False),
         ("val_every", 0, False), ("val_steps", 1, False), ("val_samples", 1, False), ("warmup_steps", 0, False),
         ("checkpoint_every", 1, True), ("max_steps", 1, True))
#: (key, bounds) of every number field (all may be None: from the recipe, or off)
_NUMBERS = (("lr", {"above": 0}), ("lr_min", {"above": 0}), ("weight_decay", {"at_least": 0}),
            ("ema_decay", {"at_least": 0, "below": 1}), ("time_budget_s", {"at_least": 0}),
            ("grad_clip", {"at_least": 0, "hint": " (0 turns clipping off)"}))


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs (see module docstring); ``None`` = "from the recipe".

    ``inputs``: the model kind's input config (None or a JSON object: over the kind's defaults — the phantoms'
    preset for phantom data); ``data`` and ``diffusion`` may be given as JSON objects too. Every value is
    checked once, here (``__post_init__``); a bad one → one-line :class:`MddoseError` ``"train config: ..."``.
    """

    model: str = "md-dose"
    preset: str | None = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    inputs: Any = None                   # the kind's input config: SliceConfig (2D models), VolumeConfig (3D)
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

    # ------------------------------------------------------------------ the one check
    def __post_init__(self) -> None:
        w = WHERE
        for k, typ in (("model", str), ("recipe", str), ("device", str), ("preset", (str, type(None))),
                       ("log_dir", (str, type(None)))):
            if not isinstance(getattr(self, k), typ):
                raise MddoseError(f"{w}: {k} must be a string, got {getattr(self, k)!r}")
        from mddose.diffusion import SAMPLERS
        for k, choices in (("recipe", tuple(RECIPES)), ("lr_schedule", LR_SCHEDULES),
                           ("amp_dtype", ("bfloat16", "float16")), ("val_sampler", tuple(SAMPLERS))):
            v = getattr(self, k)
            if (v is not None or k != "lr_schedule") and (not isinstance(v, str) or v not in choices):
                raise MddoseError(f"{w}: {k} must be one of {', '.join(choices)}, got {v!r}")
        if not isinstance(self.model_overrides, dict):
            raise MddoseError(f"{w}: 'model_overrides' must be a JSON object, got {self.model_overrides!r}")
        grid = [k for k in GRID_FIELDS if k in self.model_overrides]
        if grid:
            raise MddoseError(f"{w}: model_overrides.{grid[0]}: the grid is the data's; set "
                              f"{self.kind.section}.size instead")
        if "residual_channel" in self.model_overrides:
            raise MddoseError(f"{w}: model_overrides.residual_channel: set {self.kind.section}.residual instead")
        for k, lo, optional in _INTS:
            if getattr(self, k) is not None or not optional:
                check_number(w, k, getattr(self, k), integer=True, at_least=lo)
        for k, limits in _NUMBERS:
            if getattr(self, k) is not None:
                check_number(w, k, getattr(self, k), **limits)
        for k in ("amsgrad", "ema_warmup", "amp"):
            if getattr(self, k) is not None and not isinstance(getattr(self, k), bool):
                raise MddoseError(f"{w}: {k} must be true or false, got {getattr(self, k)!r}")
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if not isinstance(self.data, DataConfig):
            set_("data", dataclass_from_dict(DataConfig, self.data, w, prefix="data."))
        if not isinstance(self.diffusion, DiffusionConfig):
            set_("diffusion", _section(DiffusionConfig, self.diffusion, "diffusion."))
        set_("inputs", self.kind.parse_inputs(self.inputs, phantoms=self.data.train is None, where=w,
                                              defaults=self._preset_grid()))

    def _preset_grid(self) -> dict[str, int]:
        """``{"size": grid}`` when the model's preset recommends a ``grid_size`` (3D models: ``small`` = 64),
        the default of the input config's ``size``; else ``{}``."""
        from mddose.models.registry import make_config
        grid = getattr(make_config(self.model, self.preset), "grid_size", None)
        return {"size": int(grid)} if grid else {}

    @property
    def kind(self):
        """The :class:`~mddose.kinds.base.ModelKind` of ``model`` (unknown model: one line listing them)."""
        from mddose.models.registry import kind_of
        return kind_of(self.model)

    # ------------------------------------------------------------------ recipe resolution
    def resolved(self) -> "TrainConfig":
        """A copy with every ``None`` recipe field filled from :data:`RECIPES` (self when none is None)."""
        recipe = {**RECIPE_DEFAULTS, **RECIPES[self.recipe]}
        fill = {k: v for k, v in recipe.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fill) if fill else self

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
    def to_dict(self, *, inputs: bool = True) -> dict[str, Any]:
        """The JSON object of this config, the input config under its kind's section (``slices`` / ``volume``);
        ``inputs=False`` leaves it out (a checkpoint keeps it once, under its own key)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "inputs"}
        d["data"], d["diffusion"] = self.data.to_dict(), self.diffusion.to_dict()
        if inputs:
            d[self.kind.section] = self.inputs.to_dict()
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "train config", inputs: Any = None) -> "TrainConfig":
        """Build from a JSON object, checked; unknown keys or bad values → one-line :class:`MddoseError` naming
        the key and ``where``. ``inputs``: the input config to use when ``d`` has none (a checkpoint's)."""
        from mddose.kinds import all_kinds

        if not isinstance(d, dict):
            raise MddoseError(f"{where}: a train config must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        try:
            from mddose.models.registry import kind_of
            own = kind_of(d.get("model", cls.model)) if isinstance(d.get("model", cls.model), str) else None
            for kind in all_kinds().values():
                if kind.section in d and kind is not own:
                    section = d.pop(kind.section)
                    if section and own is not None:
                        raise MddoseError(f"{WHERE}: '{kind.section}' is for {kind.words}s; "
                                          f"{d.get('model', cls.model)} is a {own.words} (use '{own.section}')")
            if own is not None:
                d["inputs"] = d.pop(own.section, inputs)
            elif "inputs" in d:
                raise MddoseError(f"{WHERE}: unknown key(s) inputs")
            return dataclass_from_dict(cls, d, WHERE)
        except MddoseError as exc:
            raise _named(exc, where) from None


def _section(cls, d: Any, prefix: str):
    """A section of the train config (``cls`` from the JSON object ``d``), its messages named ``train config``."""
    try:
        return dataclass_from_dict(cls, d, WHERE, prefix=prefix)
    except MddoseError as exc:
        msg = str(exc)
        raise MddoseError(msg if msg.startswith(WHERE) else f"{WHERE}: {msg}") from None


def _named(exc: MddoseError, where: str) -> MddoseError:
    """``exc`` with its ``train config`` prefix replaced by ``where`` (the file)."""
    msg = str(exc)
    if msg.startswith(f"{WHERE}: "):
        msg = msg[len(WHERE) + 2:]
    return MddoseError(f"{where}: {msg}")


def resume_differences(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """``"key (old → new)"`` for every field outside :data:`RESUME_MAY_CHANGE` where the resolved ``cfg``
    differs from ``saved`` (the resolved config dict of the run being resumed; missing fields: defaults)."""
    old = TrainConfig.from_dict(saved, "the run's saved train config", inputs=cfg.inputs).to_dict()
    new = cfg.to_dict()
    for d in (old, new):                 # the same folder, however spelled (relative to the current directory)
        for k in ("train", "val"):
            if d["data"].get(k):
                d["data"][k] = os.path.abspath(d["data"][k]) if isinstance(d["data"][k], str) else \
                    [os.path.abspath(x) for x in d["data"][k]]
    out = []
    for k in new:
        if k not in RESUME_MAY_CHANGE and old.get(k) != new[k]:
            if isinstance(new[k], dict) and isinstance(old.get(k), dict):
                out += [f"{k}.{s} ({old[k].get(s)!r} → {new[k].get(s)!r})"
                        for s in sorted(set(old[k]) | set(new[k])) if old[k].get(s) != new[k].get(s)]
            else:
                out.append(f"{k} ({old.get(k)!r} → {new[k]!r})")
    return out


def load_train_config(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """Read a JSON train config (unknown keys rejected) and apply top-level ``overrides`` (None = keep).

    Relative ``data.train`` / ``data.val`` paths are resolved against the current directory first,
    then against the config file's directory, and made absolute (so that the run's saved config names its
    data wherever it is resumed from).
    """
    path = Path(path)
    raw = read_json_object(path, "config file")
    check_finite(raw, str(path))
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
        try:
            cfg = dataclasses.replace(cfg, **overrides)
        except MddoseError as exc:
            raise _named(exc, str(path)) from None
    return cfg


def builtin_config(name: str) -> Path:
    """Path of a training config shipped in ``mddose/configs`` (:func:`~mddose.utils.builtin.builtin_configs`:
    ``"demo"``, ``"openkbp"``, ``"openkbp-cpu"``, ``"openkbp-c3d"``, ...)."""
    found = builtin_configs()
    if name not in found:
        raise MddoseError(f"--config: no config file and no built-in config named {name!r} "
                          f"(built-in: {', '.join(found)})")
    return found[name]
