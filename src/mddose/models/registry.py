"""Model registry: every architecture registers a typed, frozen config class and a builder.

Every entry points to its kind (``kind``: the name of a :class:`~mddose.kinds.base.ModelKind`, :func:`kind_of`),
which owns everything that differs between kinds (objective, inputs, checkpoint entries, prediction); the
built-in kinds:

* ``"diffusion"`` — a denoiser with one interface, ``model(x_t, t, cond) -> output`` with
  ``x_t: (B, 1, H, W)``, ``t: (B,)`` (integer timesteps, long or float), ``cond: (B, C, H, W)``,
  returning ``(B, 1, H, W)`` (ε or v, as the diffusion config's ``prediction`` says) — samplers and the
  trainer never know which network they drive.
* ``"regression"`` — a direct dose regressor over whole volumes, ``model(cond) -> dose`` with
  ``cond: (B, C, D, H, W)`` returning ``(B, 1, D, H, W)``; ``model.training_outputs(cond)`` returns
  ``[(weight, prediction), ...]`` for deep supervision (C3D: ``[(0.5, A), (1.0, B)]``).

Every architecture registers itself when its module is imported, and ``mddose/models/__init__.py`` imports
them all; since Python imports a package before any of its modules, importing this module from anywhere
(``from mddose.models.registry import build_model``) has registered every architecture — this module never
imports the package back (no import cycle).

Every config has an ``in_channels`` field. Each entry also records ``dims`` (2 or 3), ``fidelity``
(``"official-code"``: layer for layer from the authors' code; ``"paper"``: from the paper;
``"reconstruction"``: designed by us where nothing is published) and ``source`` (one line).

Usage — ``register_model(name, config_cls, presets=None, *, kind, dims, fidelity, source, notes, choices)``
decorates the builder ``builder(config) -> nn.Module`` (this example runs as a test,
``tests/models/test_registry.py``)::

    >>> from dataclasses import dataclass
    >>> from torch import nn
    >>> @dataclass(frozen=True)
    ... class PlainConfig(ModelConfig):
    ...     in_channels: int = 2
    ...     width: int = 16
    >>> @register_model("plain", PlainConfig, presets={"tiny": {"width": 4}}, kind="regression", dims=3,
    ...                 fidelity="reconstruction", source="an example")
    ... def build_plain(cfg: PlainConfig) -> nn.Module:
    ...     return nn.Conv3d(cfg.in_channels, 1, 3, padding=1)
    >>> model = build_model("plain", preset="tiny", in_channels=9)
    >>> model.config                        # the frozen config, saved next to the weights
    PlainConfig(in_channels=9, width=4)
    >>> model.config.to_dict()
    {'in_channels': 9, 'width': 4, 'model': 'plain'}
    >>> build_model_from_dict(model.config.to_dict()).config == model.config
    True
    >>> model_info("plain").kind, available_models()["plain"]
    ('regression', ['tiny'])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn

from mddose.errors import MddoseError
from mddose.kinds import ModelKind, get_kind
from mddose.utils.config import dataclass_from_dict


@dataclass(frozen=True)
class ModelConfig:
    """Base of every model config. Subclasses are frozen dataclasses with JSON-friendly fields."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = _NAME_OF[type(self)]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model config") -> "ModelConfig":
        """Inverse of :meth:`to_dict` (the ``"model"`` key is ignored): :func:`mddose.utils.config.dataclass_from_dict`,
        so unknown keys and a non-object raise a one-line :class:`MddoseError` naming ``where``."""
        return dataclass_from_dict(cls, d, where, ignore=("model",))


FIDELITIES = ("official-code", "paper", "reconstruction")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of a model besides its config: see the module docstring."""

    name: str
    kind: str
    dims: int
    fidelity: str
    source: str
    notes: str = ""
    choices: tuple[tuple[str, tuple[str, ...]], ...] = ()   # (config field, its allowed values), e.g. encoders

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["choices"] = {k: list(v) for k, v in self.choices}
        return d


@dataclass
class _Entry:
    config_cls: type[ModelConfig]
    builder: Callable[[ModelConfig], nn.Module]
    presets: dict[str, dict[str, Any]]
    info: ModelInfo
    kind: ModelKind


_REGISTRY: dict[str, _Entry] = {}
_NAME_OF: dict[type, str] = {}


def register_model(name: str, config_cls: type[ModelConfig], presets: dict[str, dict[str, Any]] | None = None, *,
                   kind: str = "diffusion", dims: int = 2, fidelity: str = "paper", source: str = "",
                   notes: str = "", choices: dict[str, Sequence[str]] | None = None):
    """Function decorator registering ``builder(config) -> nn.Module`` under ``name`` (see module docstring).

    ``choices``: config fields with a closed set of values worth listing (``mddose models --json`` shows
    them, e.g. md-dose's ``structure_encoder``)."""
    if dims not in (2, 3) or fidelity not in FIDELITIES:
        raise ValueError(f"register_model({name!r}): bad dims/fidelity {dims!r}/{fidelity!r}")
    kind_obj = get_kind(kind, f"register_model({name!r})")
    info = ModelInfo(name, kind, dims, fidelity, source, notes,
                     tuple((k, tuple(v)) for k, v in (choices or {}).items()))

    def deco(builder):
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        _REGISTRY[name] = _Entry(config_cls, builder, dict(presets or {}), info, kind_obj)
        _NAME_OF[config_cls] = name
        return builder

    return deco


def available_models() -> dict[str, list[str]]:
    """Model name → list of preset names."""
    return {n: list(e.presets) for n, e in sorted(_REGISTRY.items())}


def model_info(name: str) -> ModelInfo:
    """The registry's :class:`ModelInfo` of model ``name`` (kind, dims, fidelity, source)."""
    if name not in _REGISTRY:
        raise MddoseError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name].info


def kind_of(model: str | ModelConfig) -> ModelKind:
    """The :class:`~mddose.kinds.base.ModelKind` of a model (by name, or of its config)."""
    if isinstance(model, ModelConfig):
        return _REGISTRY[_NAME_OF[type(model)]].kind
    model_info(model)                               # an unknown name: one line listing the models
    return _REGISTRY[model].kind


def info_of(config: ModelConfig) -> ModelInfo:
    """The :class:`ModelInfo` of the model a config belongs to."""
    return _REGISTRY[_NAME_OF[type(config)]].info


def make_config(name: str, preset: str | None = None, **overrides: Any) -> ModelConfig:
    """The config of model ``name`` from ``preset`` (or the class defaults) with ``overrides``."""
    if name not in _REGISTRY:
        raise MddoseError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    entry = _REGISTRY[name]
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in entry.presets:
            raise MddoseError(f"unknown preset {preset!r} for model {name!r}; available: {', '.join(entry.presets)}")
        base.update(entry.presets[preset])
    base.update(overrides)
    return entry.config_cls.from_dict(base, where=f"model {name!r}")


def build_model(name_or_config: str | ModelConfig, preset: str | None = None, **overrides: Any) -> nn.Module:
    """Build a model from a name (+ preset, overrides) or from a config; sets ``model.config``."""
    cfg = name_or_config if isinstance(name_or_config, ModelConfig) else make_config(name_or_config, preset, **overrides)
    model = _REGISTRY[_NAME_OF[type(cfg)]].builder(cfg)
    model.config = cfg
    return model


def build_model_from_dict(d: dict[str, Any], where: str = "model config",
                          defaults: dict[str, Any] | None = None) -> nn.Module:
    """Build from ``config.to_dict()`` output (the ``"model"`` key names the architecture); ``defaults``: values of
    fields ``d`` leaves out, for the fields the model's config has (a checkpoint's grid: the data's size)."""
    name = d.get("model")
    if name not in _REGISTRY:
        raise MddoseError(f"{where}: unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name].config_cls
    own = {f.name for f in dataclasses.fields(cls)}
    return build_model(cls.from_dict({**{k: v for k, v in (defaults or {}).items() if k in own}, **d}, where=where))
