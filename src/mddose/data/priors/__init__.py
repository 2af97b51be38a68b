"""Dose priors computed from what a planner has before planning: masks, CT, spacing and the beams.

Which priors a model sees is a :class:`PriorsSpec` (config ``inputs.priors``); :func:`compute_priors`
returns them for one patient as (Z, Y, X) float32 arrays on the patient's grid, keyed by channel name, in
this order (see :func:`channel_names`):

=====================  =====================================================================  ===========
kind (``names``)        channels                                                               unit
=====================  =====================================================================  ===========
``"sdf"``              ``sdf_<level>`` for each target level of the patient's prescriptions    mm, < 0
                       (highest first; an absent level is "far": the grid diagonal), then      inside
                       ``sdf_targets`` (their union)
``"beams"``            ``beam_<angle>`` per field, in the arrangement's order: 1 on the        {0, 1}
                       voxels the field crosses to reach the targets (BEV + margin), in body
``"beam_sum"``         ``beam_sum``: the sum of the beam masks                                 fields
``"prior_dose"``       ``prior_dose``: ray-traced prior dose (:mod:`.prior_dose`)              Gy
=====================  =====================================================================  ===========

Conventions: gantry angles and how they map to the (y, x) axes in :mod:`.beams`; the beam frame in
:mod:`.geometry`; consistency with flips/rotations in :mod:`.transforms`; on-disk cache in :mod:`.cache`.
The dose region (beam masks and dose are 0 outside it) is the possible-dose mask, else a ``Body`` ROI,
else CT > −400 HU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from mddose.data.patient import Patient
from mddose.data.priors.beams import (
    BeamArrangement,
    arrangement_for,
    beam_vectors,
    from_rtplan,
    map_angle,
    patient_rtplan,
)
from mddose.data.priors.distance import signed_distance, target_sdfs
from mddose.data.priors.prior_dose import DoseModel, hu_to_density, raytrace
from mddose.data.priors.transforms import AxialTransform, transform_priors
from mddose.data.roi_names import BODY
from mddose.errors import MddoseError

#: The kinds of prior, in channel order.
PRIOR_KINDS: tuple[str, ...] = ("sdf", "beams", "beam_sum", "prior_dose")
#: CT threshold of the body when a patient has neither a possible-dose mask nor a Body ROI.
BODY_HU = -400.0

__all__ = [
    "PRIOR_KINDS", "AxialTransform", "BeamArrangement", "DoseModel", "PriorsSpec", "arrangement_for",
    "beam_vectors", "channel_names", "compute_priors", "dose_region", "from_rtplan", "hu_to_density",
    "map_angle", "patient_rtplan", "signed_distance", "target_levels", "transform_priors",
]


@dataclass(frozen=True)
class PriorsSpec:
    """Which priors, with which parameters (config ``inputs.priors``; recorded with a checkpoint).

    Attributes:
        names: kinds of prior, a non-empty subset of :data:`PRIOR_KINDS` (kept in that order).
        arrangement: the fields (default: OpenKBP's nine); a patient's RTPLAN may override it
            (:func:`~mddose.data.priors.beams.arrangement_for`).
        dose: margin, penumbra and depth-dose parameters (the margin also grows the beam masks).
    """

    names: tuple[str, ...] = PRIOR_KINDS
    arrangement: BeamArrangement = field(default_factory=BeamArrangement.openkbp_default)
    dose: DoseModel = field(default_factory=DoseModel)

    def __post_init__(self) -> None:
        names = self.names
        if isinstance(names, str) or not hasattr(names, "__iter__"):
            raise MddoseError(f"inputs.priors.names: expected a list of {list(PRIOR_KINDS)}, got {names!r}")
        names = tuple(str(n) for n in names)
        if not names:
            raise MddoseError(f"inputs.priors.names: empty; choose from {list(PRIOR_KINDS)}")
        bad = [n for n in names if n not in PRIOR_KINDS]
        if bad:
            raise MddoseError(f"inputs.priors.names: unknown prior(s) {bad}; choose from {list(PRIOR_KINDS)}")
        object.__setattr__(self, "names", tuple(k for k in PRIOR_KINDS if k in names))
        if not isinstance(self.arrangement, BeamArrangement):
            object.__setattr__(self, "arrangement", BeamArrangement.from_config(self.arrangement))
        d = self.dose if isinstance(self.dose, DoseModel) else _dose_model(self.dose)
        object.__setattr__(self, "dose", d)
        checks = {"margin_mm": (0.0, False), "penumbra_mm": (0.0, False), "mu_per_mm": (0.0, True),
                  "buildup_mm": (0.0, True), "scatter_mm": (0.0, True), "modulation_normal_weight": (0.0, False)}
        for key, (lo, strict) in checks.items():
            v = getattr(d, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or (v <= lo if strict else v < lo):
                raise MddoseError(f"inputs.priors.dose.{key} must be a {'positive' if strict else 'non-negative'} "
                                  f"number, got {v!r}")
        f = d.scatter_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0.0 <= f < 1.0):
            raise MddoseError(f"inputs.priors.dose.scatter_fraction must be in [0, 1), got {f!r}")
        it = d.modulation_iterations
        if isinstance(it, bool) or not isinstance(it, int) or not 0 <= it <= 100:
            raise MddoseError(f"inputs.priors.dose.modulation_iterations must be an integer in 0..100, got {it!r}")
        if d.normalise not in ("mean", "d95"):
            raise MddoseError(f"inputs.priors.dose.normalise must be 'mean' or 'd95', got {d.normalise!r}")

    @classmethod
    def from_dict(cls, value: Mapping[str, Any] | None) -> "PriorsSpec":
        """From config ``inputs.priors``: ``{"names": [...], "beams": <arrangement>, "dose": {...}}``."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise MddoseError(f"inputs.priors: expected an object, got {value!r}")
        unknown = set(value) - {"names", "beams", "dose"}
        if unknown:
            raise MddoseError(f"inputs.priors: unknown key(s) {sorted(unknown)} (names, beams, dose)")
        return cls(tuple(value.get("names", PRIOR_KINDS)), BeamArrangement.from_config(value.get("beams")),
                   _dose_model(value.get("dose", {})))

    def to_dict(self) -> dict:
        """JSON-ready form, read back by :meth:`from_dict` (what a checkpoint records)."""
        return {"names": list(self.names), "beams": self.arrangement.to_dict(), "dose": asdict(self.dose)}


def _dose_model(value: Any) -> DoseModel:
    if not isinstance(value, Mapping):
        raise MddoseError(f"inputs.priors.dose: expected an object, got {value!r}")
    known = set(DoseModel.__dataclass_fields__)
    unknown = set(value) - known
    if unknown:
        raise MddoseError(f"inputs.priors.dose: unknown key(s) {sorted(unknown)} ({', '.join(sorted(known))})")
    return DoseModel(**value)


def target_levels(patient: Patient) -> list[str]:
    """The patient's target levels (prescription keys), highest prescription first."""
    return sorted(patient.prescriptions, key=lambda n: -patient.prescriptions[n])


def channel_names(spec: PriorsSpec, levels: list[str]) -> list[str]:
    """Channel names of ``spec`` for a patient whose target levels are ``levels`` (see the module docstring)."""
    out: list[str] = []
    for kind in spec.names:
        if kind == "sdf":
            out += [f"sdf_{n}" for n in levels] + ["sdf_targets"]
        elif kind == "beams":
            out += spec.arrangement.channel_names()
        else:
            out.append(kind)
    return out


def dose_region(patient: Patient) -> np.ndarray:
    """(Z, Y, X) bool: the possible-dose mask, else the Body ROI, else CT > −400 HU."""
    if patient.possible_dose_mask is not None and patient.possible_dose_mask.any():
        return patient.possible_dose_mask
    if BODY in patient.masks and patient.masks[BODY].any():
        return patient.masks[BODY]
    return patient.ct > BODY_HU


def compute_priors(patient: Patient, spec: PriorsSpec | None = None,
                   arrangement: BeamArrangement | None = None) -> dict[str, np.ndarray]:
    """The priors of ``patient`` (Z, Y, X) float32 each, keyed by :func:`channel_names` in that order.

    Args:
        patient: the planning case (CT, target masks, spacing; its dose is not used).
        spec: which priors (default: all, OpenKBP's nine fields).
        arrangement: the patient's own fields (e.g. from its RTPLAN); default ``spec.arrangement``. The
            ``beam_<angle>`` channels follow ``spec.arrangement``; a different patient arrangement is only
            allowed without ``"beams"`` (fixed channels).
    Raises:
        MddoseError (one line, naming the patient) if beam priors are asked for a patient without target voxels.
    """
    spec = spec or PriorsSpec()
    arr = arrangement or spec.arrangement
    if "beams" in spec.names and arr.gantry_deg != spec.arrangement.gantry_deg:
        raise MddoseError(f"patient {patient.id}: its beams ({', '.join(f'{a:g}' for a in arr.gantry_deg)}) "
                          "differ from the per-field channels of inputs.priors.beams")
    levels = target_levels(patient)
    targets = {n: patient.masks[n] for n in levels if n in patient.masks}
    out: dict[str, np.ndarray] = {}
    if "sdf" in spec.names:
        out.update(target_sdfs(patient.masks, levels, patient.shape, patient.spacing))
    beam_kinds = {"beams", "beam_sum", "prior_dose"} & set(spec.names)
    if beam_kinds:
        if not any(m.any() for m in targets.values()):
            raise MddoseError(f"patient {patient.id}: no target voxels (levels {levels}); the beam priors need a "
                              "target")
        rt = raytrace(patient.ct, targets, patient.prescriptions, dose_region(patient), patient.spacing, arr,
                      spec.dose, patient.direction, want_dose="prior_dose" in spec.names)
        if "beams" in spec.names:
            for name, m in zip(arr.channel_names(), rt["beams"]):
                out[name] = m.astype(np.float32)
        if "beam_sum" in spec.names:
            out["beam_sum"] = rt["beam_sum"]
        if "prior_dose" in spec.names:
            out["prior_dose"] = rt["prior_dose"]
    names = channel_names(spec, levels)
    return {n: np.ascontiguousarray(out[n], dtype=np.float32) for n in names}
