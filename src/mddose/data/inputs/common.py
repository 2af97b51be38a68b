"""What the 2D slice and the 3D volume representations share.

Both configs (:class:`~mddose.data.inputs.slices.SliceConfig`, :class:`~mddose.data.inputs.volume.VolumeConfig`)
are frozen dataclasses with the fields ``targets`` and ``oars`` and the same conditioning channels
``[CT, PTV, OAR_1 … OAR_n]``; :class:`InputConfig` gives them one JSON (de)serialisation (through
:func:`mddose.utils.config.dataclass_from_dict`: unknown keys refused) and one left/right channel
permutation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

from mddose.errors import MddoseError
from mddose.utils.config import check_number, dataclass_from_dict, human_bytes, physical_memory

C = TypeVar("C", bound="InputConfig")


def mirror_name(name: str) -> str | None:
    """The left/right counterpart of an ROI name (``LungL`` ↔ ``LungR``, ``LeftParotid`` ↔ ...), or None."""
    for a, b in (("Left", "Right"), ("Right", "Left"), ("left", "right"), ("right", "left")):
        if a in name:
            return name.replace(a, b)
    for a, b in (("_L", "_R"), ("_R", "_L"), ("L", "R"), ("R", "L")):
        if name.endswith(a) and len(name) > len(a):
            return name[: -len(a)] + b
    return None


def config_number(where: str, key: str, v: Any, low: int | None = None) -> Any:
    """``v`` as an int ≥ ``low``, or (``low`` None) as a float > 0: :func:`mddose.utils.config.check_number`, the
    one number check, with the value normalised (so that equal configs hash alike)."""
    if low is None:
        return float(check_number(where, key, v, above=0))
    return int(check_number(where, key, v, integer=True, at_least=low))


def roi_names(where: str, key: str, v: Any) -> tuple[str, ...]:
    """``v`` (a list of ROI names) as a tuple of str; a bare string or a non-list → one-line MddoseError."""
    if isinstance(v, str) or not isinstance(v, (list, tuple)) or not all(isinstance(t, str) and t for t in v):
        raise MddoseError(f"{where}: {key} must be a list of ROI names, got {v!r}")
    return tuple(v)


def check_fits_memory(where: str, size: int, channels: int, dims: int, what: str) -> None:
    """Refuse a grid ``size`` whose one sample (``channels`` inputs + dose + mask, float32, ``size ** dims``
    voxels) would need more than a quarter of :func:`physical_memory` — it could never be trained or predicted
    here; a one-line :class:`MddoseError` naming ``size`` and the largest size that fits, before any work."""
    budget = physical_memory() // 4
    per_voxel = (channels + 2) * 4
    if per_voxel * size ** dims <= budget:
        return
    fits = int((budget / per_voxel) ** (1 / dims))
    while per_voxel * (fits + 1) ** dims <= budget:
        fits += 1
    while fits > 1 and per_voxel * fits ** dims > budget:
        fits -= 1
    raise MddoseError(f"{where}: size {size} does not fit in memory: one {what} of {channels} + 2 float32 channels "
                      f"needs {human_bytes(per_voxel * size ** dims)}, over a quarter of this machine's "
                      f"{human_bytes(physical_memory())} (size <= {fits} fits)")


def ct_window(where: str, v: Any) -> tuple[float, float]:
    """``v`` as a (low, high) HU window of finite numbers with low < high; else a one-line MddoseError."""
    try:
        clip = tuple(float(x) for x in v) if not isinstance(v, str) else ()
    except (TypeError, ValueError):
        clip = ()
    if len(clip) != 2 or not all(map(math.isfinite, clip)) or not clip[0] < clip[1]:
        raise MddoseError(f"{where}: ct_clip must be (low, high) with low < high, got {v!r}")
    return clip  # type: ignore[return-value]


def flag(where: str, key: str, v: Any) -> bool:
    """``v`` if it is a bool; else a one-line MddoseError (``"no"`` or ``0`` are not silently true/false)."""
    if not isinstance(v, bool):
        raise MddoseError(f"{where}: {key} must be true or false, got {v!r}")
    return v


def drop_empty_rois(patient, targets: tuple[str, ...] | list[str]):
    """``(patient, empty)``: a patient's ROIs whose mask has no voxel are treated as absent — ``empty`` names them
    (logged once), and the patient returned is a shallow copy without them (the same object when none is empty).

    Raises:
        MddoseError: none of ``targets`` has a voxel: the patient is refused by name (training and prediction
            alike: the dose follows the target).
    """
    from mddose.utils.log import logger

    empty = [n for n, m in patient.masks.items() if not m.any()]
    if empty:
        logger.warning("patient %s: ROI(s) with no voxel, treated as absent: %s", patient.id, ", ".join(empty))
        patient = patient.with_dose(patient.dose)
        patient.masks = {n: m for n, m in patient.masks.items() if n not in empty}
    if not any(t in patient.masks for t in targets):
        gone = [t for t in targets if t in empty]
        raise MddoseError(f"patient {patient.id}: has no target ROI (the model needs one of {', '.join(targets)}"
                          + (f"; {', '.join(gone)} has no voxel" if gone else "") + ")")
    return patient, empty


def with_targets(patients: list, targets) -> tuple[list, list[tuple[str, str]]]:
    """(the loaded ``patients`` that have a target with voxels, ``(name, message)`` of the others — each logged)."""
    from mddose.utils.batch import skip_item

    kept, skipped = [], []
    for p in patients:
        try:
            drop_empty_rois(p, targets)
            kept.append(p)
        except MddoseError as exc:
            skipped.append(skip_item(p, exc, "validation patient"))
    return kept, skipped


class InputConfig:
    """Mixin of the slice and volume configs (frozen dataclasses with ``targets``, ``oars`` and ``priors``).

    Channels: the config's own (:attr:`base_channel_names`), then the prior channels of ``priors``
    (:mod:`mddose.data.inputs.prior_channels`). Subclasses set ``WHERE`` (the name used in error messages, e.g.
    ``"slice config"``), :attr:`ct_channels` and :attr:`air_value`.
    """

    WHERE = "input config"
    targets: tuple[str, ...]
    oars: tuple[str, ...]
    priors: Any = None

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples as lists, ``priors`` as :meth:`~mddose.data.priors.PriorsSpec.to_dict` or None)."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls: type[C], d: Any) -> C:
        """Inverse of :meth:`to_dict`; unknown keys or a non-object raise a one-line :class:`MddoseError`."""
        return dataclass_from_dict(cls, d, cls.WHERE)

    def _check_priors(self) -> None:
        """Parse ``priors`` (JSON object or spec) in ``__post_init__``."""
        from mddose.data.inputs.prior_channels import parse_priors

        object.__setattr__(self, "priors", parse_priors(self.WHERE, self.priors))

    # ------------------------------------------------------------------ channels
    @property
    def base_channel_names(self) -> tuple[str, ...]:
        """The config's own channels: ``("CT", "PTV", *oars)``."""
        return ("CT", "PTV", *self.oars)

    @property
    def prior_names(self) -> tuple[str, ...]:
        """The prior channels (after the base ones); () without ``priors``."""
        from mddose.data.inputs.prior_channels import prior_names

        return prior_names(self.priors, self.targets)

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Names of all conditioning channels: :attr:`base_channel_names` then :attr:`prior_names`."""
        return (*self.base_channel_names, *self.prior_names)

    @property
    def channels(self) -> int:
        """Number of conditioning channels C."""
        return len(self.channel_names)

    @property
    def ct_channels(self) -> tuple[int, ...]:
        """Indices of the CT channels (padded with air)."""
        return (0,)

    @property
    def air_value(self) -> float:
        """The CT channels' value for air (their padding value)."""
        raise NotImplementedError

    @property
    def pad_values(self) -> tuple[float, ...]:
        """(C,) the value of each channel outside the patient (padding): air for CT, 1 (far) for a signed
        distance prior, 0 otherwise."""
        from mddose.data.inputs.prior_channels import prior_pads

        base = [0.0] * len(self.base_channel_names)
        for c in self.ct_channels:
            base[c] = self.air_value
        return (*base, *prior_pads(self.prior_names))

    def prior_permutation(self, **transform: Any) -> tuple[int, ...]:
        """Permutation of all C channels that goes with a flip / rotation (``flip_x``, ``flip_y``, ``rotate_deg``):
        identity on the base channels, the fields' relabelling on per-field beam priors."""
        from mddose.data.inputs.prior_channels import transform_permutation

        nb = len(self.base_channel_names)
        perm = transform_permutation(self.priors, self.prior_names, **transform)
        return (*range(nb), *(nb + p for p in perm))

    @property
    def mirror_permutation(self) -> tuple[int, ...]:
        """Channel permutation to apply with a left–right flip (swaps paired L/R OAR channels and the beams of
        fields mirrored onto each other)."""
        perm = list(self.prior_permutation(flip_x=True))
        for i, name in enumerate(self.oars):
            other = mirror_name(name)
            if other is not None and other in self.oars:
                perm[2 + i] = 2 + self.oars.index(other)
        return tuple(perm)
