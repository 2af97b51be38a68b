"""Prediction options of a checkpoint: what ``mddose predict`` samples with when the user gives none.

Order of precedence: options given (CLI / arguments) → the checkpoint's own recommendation (``config.json`` →
``"predict"``, written by ``mddose export --sampler/--steps``) → the defaults of its kind of model. The options
a kind takes, their one default each and their one check belong to the kind
(:attr:`~mddose.kinds.base.ModelKind.options`, :meth:`~mddose.kinds.base.ModelKind.check_option`); this module
only merges them, once, in :func:`resolve_options`.
"""

from __future__ import annotations

from mddose.errors import MddoseError
from mddose.kinds import ModelKind, all_kinds, get_kind


def option_flag(name: str) -> str:
    """The command-line flag of option ``name``: ``--steps``; a flag that is on by default: ``--no-tta``."""
    return f"--no-{name}" if isinstance(_default(name), bool) and _default(name) else f"--{name}"


def _default(name: str):
    return next((k.options[name] for k in all_kinds().values() if name in k.options), None)


def resolve_options(kind: str | ModelKind, model_name: str = "this model", defaults: dict | None = None,
                    **given) -> dict:
    """The prediction options of a ``kind`` of model: ``given`` (None = not given) over the checkpoint's own
    ``defaults`` (:func:`checkpoint_defaults`) over the kind's, each checked by the kind.

    An option that only another kind of model takes → one-line :class:`MddoseError` naming it.
    """
    kind = kind if isinstance(kind, ModelKind) else get_kind(kind)
    given = {k: v for k, v in given.items() if v is not None}
    for name in given:
        if name not in kind.options:
            other = [k.words for k in all_kinds().values() if name in k.options]
            raise MddoseError(f"{option_flag(name)}: only for {' and '.join(w + 's' for w in other) or 'no'}; "
                              f"{model_name} is a {kind.words}")
    for name, value in given.items():
        kind.check_option(name, value, option_flag(name))
    return {**kind.options, **(defaults or {}), **given}


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
    kind = get_kind(bundle.kind)
    if not isinstance(d, dict) or any(k not in kind.options for k in d):
        raise MddoseError(f"{where}: 'predict' must map options of a {kind.words} ({', '.join(kind.options)}) "
                          f"to values, got {d!r}")
    for k, v in d.items():
        try:
            kind.check_option(k, v, f"predict.{k}")
        except MddoseError:
            raise MddoseError(f"{where}: 'predict.{k}' = {v!r} is not a valid value") from None
    return dict(d)


def parse_beams(value, where: str = "--beams"):
    """``value`` (``"0,40,80"``, a list of angles, or None) as a :class:`~mddose.data.priors.BeamArrangement`
    (None when not given); a bad list → one-line :class:`MddoseError` naming ``where``."""
    from mddose.data.priors import BeamArrangement

    if value is None:
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            value = [float(p) for p in parts]
        except ValueError:
            raise MddoseError(f"{where}: expected gantry angles in degrees separated by commas, got "
                              f"{', '.join(parts)!r}") from None
    try:
        return BeamArrangement(tuple(value), source="command line")
    except MddoseError as exc:
        raise MddoseError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None


def with_beams(bundle, arrangement, model_name: str = "this model", where: str = "--beams"):
    """``bundle`` predicting with the fields ``arrangement`` (patients without an RTPLAN of their own).

    Refused in one line when the checkpoint was trained without beam priors, or with one input channel per field
    of another arrangement (its channels are those fields)."""
    import dataclasses

    if arrangement is None:
        return bundle
    inputs = bundle.data_config
    spec = getattr(inputs, "priors", None)
    if spec is None or not {"beams", "beam_sum", "prior_dose"} & set(spec.names):
        raise MddoseError(f"{where}: {model_name} was trained without beam priors (its inputs: "
                          f"{', '.join(inputs.channel_names)}); it takes no beam arrangement")
    if "beams" in spec.names and tuple(arrangement.gantry_deg) != tuple(spec.arrangement.gantry_deg):
        raise MddoseError(f"{where}: {model_name} has one input channel per field of its arrangement "
                          f"({', '.join(f'{a:g}' for a in spec.arrangement.gantry_deg)}°); it cannot take other "
                          "fields")
    arrangement = dataclasses.replace(arrangement, sad_mm=spec.arrangement.sad_mm) \
        if arrangement.source == "command line" else arrangement
    bundle.inputs = dataclasses.replace(inputs, priors=dataclasses.replace(spec, arrangement=arrangement))
    return bundle
