"""Prediction options of a checkpoint: what ``mddose predict`` samples with when the user gives none.

Order of precedence: options given (CLI / arguments) → the checkpoint's own recommendation (``config.json`` →
``"predict"``, written by ``mddose export --sampler/--steps``) → the defaults of its kind of model
(:data:`OPTION_DEFAULTS`).
"""

from __future__ import annotations

from mddose.errors import MddoseError

#: model kind → the prediction options it takes and their defaults
OPTION_DEFAULTS: dict[str, dict] = {
    "diffusion": {"sampler": "ddim", "steps": 10, "eta": 0.0, "samples": 1},
    "regression": {"tta": True},
}
_KIND_WORDS = {"diffusion": "2D diffusion models", "regression": "3D regression models"}


def resolve_options(kind: str, model_name: str = "this model", defaults: dict | None = None, **given) -> dict:
    """The prediction options of a ``kind`` of model: ``given`` (None = not given) over the checkpoint's own
    ``defaults`` (:func:`checkpoint_defaults`) over :data:`OPTION_DEFAULTS`.

    An option that only another kind of model takes → one-line :class:`MddoseError` naming it.
    """
    given = {k: v for k, v in given.items() if v is not None}
    own = OPTION_DEFAULTS[kind]
    for name in given:
        if name not in own:
            other = next(k for k, d in OPTION_DEFAULTS.items() if name in d)
            flag = "--no-tta" if name == "tta" else f"--{name}"
            raise MddoseError(f"{flag}: only for {_KIND_WORDS[other]}; {model_name} is a "
                              f"{_KIND_WORDS[kind][:-1]}")
    opts = {**own, **(defaults or {}), **given}
    if "samples" in opts and opts["samples"] < 1:
        raise MddoseError(f"--samples: must be ≥ 1, got {opts['samples']}")
    if "steps" in opts and opts["steps"] < 1:
        raise MddoseError(f"--steps: must be ≥ 1, got {opts['steps']}")
    return opts


def checkpoint_defaults(bundle) -> dict:
    """The prediction options a checkpoint recommends (``config.json`` → ``"predict"``, e.g. ``{"steps": 5}``
    for an x0-prediction model that 5 DDIM steps sample as well as 10; written by ``mddose export --steps``).

    Raises:
        MddoseError: the entry is not an object of options this kind of model takes, with valid values.
    """
    meta = bundle.meta if isinstance(bundle.meta, dict) else {}
    d = meta.get("predict")
    if d is None:
        return {}
    where = f"{bundle.path / 'config.json' if bundle.path else 'checkpoint config'}"
    own = OPTION_DEFAULTS[bundle.kind]
    if not isinstance(d, dict) or any(k not in own for k in d):
        raise MddoseError(f"{where}: 'predict' must map options of a {_KIND_WORDS[bundle.kind][:-1]} "
                          f"({', '.join(own)}) to values, got {d!r}")
    for k, v in d.items():
        if not _same_type(own[k], v) or (k in ("steps", "samples") and v < 1) or (k == "eta" and v < 0) \
                or (k == "sampler" and v not in _sampler_names()):
            raise MddoseError(f"{where}: 'predict.{k}' = {v!r} is not a valid value")
    return dict(d)


def _sampler_names() -> tuple[str, ...]:
    from mddose.diffusion.samplers import SAMPLERS

    return tuple(SAMPLERS)


def _same_type(default, value) -> bool:
    """``value`` may replace ``default``: bool for bool, str for str, int for int, a number for a float."""
    if isinstance(default, (bool, str)) or isinstance(value, bool):
        return type(value) is type(default)
    return isinstance(value, int) if isinstance(default, int) else isinstance(value, (int, float))
