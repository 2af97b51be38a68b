"""A model kind: everything that differs between kinds of model, in one object, and the table of kinds.

A kind (:class:`ModelKind`) owns, for every model registered under it (``register_model(..., kind=NAME)``):

* its **inputs**: the input-config type (``input_config``, e.g. :class:`~mddose.data.inputs.slices.SliceConfig`),
  the train config's section that holds it (``section``, e.g. ``"slices"``) and the checkpoint's key
  (``data_key``, e.g. ``"slice_config"``), and the training data built from them (:meth:`ModelKind.build_data`);
* its **objective**: the loss of a batch and the validation score (:meth:`ModelKind.objective`);
* its **checkpoint entries** besides the model and the inputs (:meth:`ModelKind.checkpoint_meta`,
  :meth:`ModelKind.load_meta`: the diffusion schedule of a diffusion model);
* its **prediction**: the options and their one default each (``options``), their one check
  (:meth:`ModelKind.check_option`), and how one patient is predicted (:meth:`ModelKind.predict`);
* the call that times one **iteration** of its networks (:meth:`ModelKind.iteration`, Table 2).

The trainer, the checkpoints, prediction and the benchmarks look the kind up (:func:`get_kind`, or
``mddose.models.registry.kind_of`` for a model) and never branch on its name. Adding a kind is one module with
one subclass and one :func:`register_kind` line (the built-in ones: :mod:`mddose.kinds.diffusion2d`,
:mod:`mddose.kinds.regression3d`, registered by ``mddose/kinds/__init__.py``; a toy kind defined in a test
module: ``tests/test_kinds.py``).
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from mddose.errors import MddoseError
from mddose.utils.config import dataclass_from_dict


@dataclass
class TrainData:
    """What :meth:`ModelKind.build_data` returns. train: Dataset of ``{"cond", "dose", ...}``; val_patients:
    Patients for the validation score; data_config: the kind's input config (its ``size`` is the grid the
    model is built for: slice size or volume edge); channels: C; skipped: ``(path, message)`` of every
    training or validation patient that could not be used."""

    train: Any
    val_patients: list
    data_config: Any
    channels: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def grid(self) -> int:
        """The data's grid (slice size or volume edge): the model's ``image_size`` / ``grid_size``."""
        return int(self.data_config.size)


@dataclass
class Fitted:
    """What a fitting kind's :attr:`ModelKind.fit` returns: ``config`` — the model config's fields the fit
    determined (e.g. the number of trees), ``state`` — the model's state dict as arrays, ``steps`` — fitting rounds
    done (trees), ``complete`` — the fit reached its end (not stopped by the time budget), ``rows`` — training
    samples, ``val_patients`` and ``skipped`` as in :class:`TrainData`, ``seconds`` — the time it took."""

    config: dict[str, Any]
    state: dict[str, Any]
    steps: int
    complete: bool
    rows: int
    seconds: float
    val_patients: list = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class ModelKind:
    """Base of every kind (see the module docstring); subclasses set the class attributes and the methods."""

    #: the registry's and the checkpoint's name of the kind (``"diffusion"``, ``"regression"``)
    name: str = ""
    #: what its models are, in messages: ``"2D diffusion model"``
    words: str = ""
    #: the train config's section of the input config, and the checkpoint's key of it
    section: str = ""
    data_key: str = ""
    #: the input-config type: a frozen dataclass with ``size``, ``channels``, ``to_dict`` and ``for_phantoms``
    input_config: type = object
    #: prediction options → their defaults (the one default of each)
    options: dict[str, Any] = {}
    #: a computed method with no weights (its checkpoint is a config.json; :meth:`model` gives its module)
    weightless: bool = False
    #: a kind whose models are fitted by the kind itself, not by gradient steps: a function
    #: ``fit(cfg, model_config, *, progress, on_round) -> Fitted`` that ``mddose train`` calls instead of the
    #: trainer (:func:`mddose.train.fitted.fit_run` builds, saves and validates the result; the tree ensembles:
    #: :mod:`mddose.kinds.tree`); None: trained by gradient steps (:meth:`objective`)
    fit: Callable[..., "Fitted"] | None = None

    # ------------------------------------------------------------------ inputs
    def parse_inputs(self, d: Any, *, phantoms: bool, where: str = "train config",
                     defaults: dict[str, Any] | None = None) -> Any:
        """The input config of the train config's section ``d`` (a JSON object, or already an input config)
        over ``defaults`` over the input config's own (the phantoms' preset for phantom data)."""
        if isinstance(d, self.input_config):
            return d
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise MddoseError(f"{where}: '{self.section}' must be a JSON object, got {d!r}")
        base = self.input_config.for_phantoms().to_dict() if phantoms else {}
        return dataclass_from_dict(self.input_config, {**base, **(defaults or {}), **d}, where,
                                   prefix=f"{self.section}.")

    def load_inputs(self, meta: dict, where: str) -> Any:
        """The input config a checkpoint's ``config.json`` (``meta``) records under :attr:`data_key`."""
        if not isinstance(meta.get(self.data_key), dict):
            raise MddoseError(f"checkpoint of a {self.words} has no {self.data_key}", where)
        return dataclass_from_dict(self.input_config, meta[self.data_key], str(where), prefix=f"{self.data_key}.")

    def build_data(self, cfg, *, progress: bool = False) -> TrainData:
        """The training data of the train config ``cfg`` (its ``inputs`` are this kind's input config)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def objective(self, cfg):
        """The training objective of ``cfg``: ``train_module(model)``, ``loss(net, batch, noise_gen, global_batch,
        rank, device) -> Tensor`` and ``validator(cfg, data, device) -> f(model) -> Gy``."""
        raise NotImplementedError

    def checkpoint_meta(self, cfg) -> dict[str, Any]:
        """Entries of a checkpoint's ``config.json`` besides the model and the inputs (e.g. ``diffusion``)."""
        return {}

    def load_meta(self, meta: dict, where: str) -> Any:
        """What prediction needs from those entries (e.g. the ``GaussianDiffusion``); None if nothing."""
        return None

    def model(self, meta: dict, where: str) -> nn.Module:
        """The module of a :attr:`weightless` kind's checkpoint ``meta`` (others build theirs from the registry)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ prediction
    def check_option(self, name: str, value: Any, where: str) -> None:
        """One-line :class:`MddoseError` ``"{where}: ..."`` unless ``value`` suits option ``name``."""
        default = self.options[name]
        same = (type(value) is type(default) if isinstance(default, (bool, str)) or isinstance(value, bool)
                else isinstance(value, int) if isinstance(default, int) else isinstance(value, (int, float)))
        if same and isinstance(value, float) and not math.isfinite(value):
            raise MddoseError(f"{where}: {name} must be a finite number, got {value!r}")
        if not same:
            raise MddoseError(f"{where}: {name} must be like {default!r}, got {value!r}")

    def predict(self, bundle, patient, opts: dict, *, batch: int, seed: int, progress: bool):
        """``(dose, std)`` of one patient, (Z, Y, X) float32 Gy on its grid (std None without samples)."""
        raise NotImplementedError

    def predicted_slices(self, bundle, patient) -> int | None:
        """How many axial slices predicting ``patient`` samples (None: the volume at once)."""
        return None

    # ------------------------------------------------------------------ benchmarks
    def iteration(self, model: nn.Module, channels: int, size: int,
                  device: str = "cpu") -> tuple[Callable[[], Any], str]:
        """(one call of the network on random inputs at batch 1 on ``device``, what it is)."""
        raise NotImplementedError


_KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind) -> ModelKind:
    """Add ``kind`` to the table of kinds (by its ``name``); a name registered twice is an error."""
    if not kind.name or kind.name in _KINDS:
        raise RuntimeError(f"model kind {kind.name!r} is unnamed or registered twice")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str, where: str = "model kind") -> ModelKind:
    """The kind called ``name``; an unknown one → one-line :class:`MddoseError` listing the kinds."""
    if name not in _KINDS:
        raise MddoseError(f"{where}: unknown model kind {name!r}; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[name]


def all_kinds() -> dict[str, ModelKind]:
    """Name → kind, every registered kind."""
    return dict(_KINDS)
