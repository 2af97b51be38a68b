"""Dose priors as model input channels: one definition for the 2D slices and the 3D volumes.

An input config (:class:`~mddose.data.inputs.slices.SliceConfig`, :class:`~mddose.data.inputs.volume.VolumeConfig`)
with ``priors`` set (a :class:`~mddose.data.priors.PriorsSpec`; JSON ``{"names": [...], "beams": ..., "dose":
...}``) gets these channels after its own, in :data:`mddose.data.priors.PRIOR_KINDS` order (:func:`prior_names`):

=====================  =========================================================  =====================  =====
kind                    channels                                                   value                  pad
=====================  =========================================================  =====================  =====
``"sdf"``              ``sdf_<t>`` for each of the config's ``targets`` (an        tanh(sdf / 30 mm):      1
                       absent one: far), then ``sdf_targets`` (their union)        −1 inside … 1 far
``"beams"``            ``beam_<angle>`` per field of the arrangement               {0, 1}                 0
``"beam_sum"``         ``beam_sum``                                                 sum / number of fields 0
``"prior_dose"``       ``prior_dose``                                               Gy / reference_dose    0
=====================  =========================================================  =====================  =====

The priors are computed once per patient on its own grid (:func:`mddose.data.priors.cache.cached_priors`, the
on-disk cache) from what a planner has before planning — never from the dose — and then go through exactly the
geometry of the other channels (crop, resize, padding with the value above). The fields are the patient's RTPLAN's
when it has a usable one (:func:`~mddose.data.priors.beams.arrangement_for`), else the spec's (default OpenKBP's
nine); a per-field channel set (``"beams"``) needs the patient's fields to be the spec's.

**Augmentation.** Scalar priors move like images. A per-field mask moves with its field: an x flip takes the
field at θ to −θ, an axial rotation by α to θ + α (:func:`transform_permutation`, the permutation of the channels
that goes with the transform). A config whose augmentation would take a field outside the arrangement is refused
when it is built (:func:`check_augmentation`): OpenKBP's nine fields allow x flips and 40° steps, not y flips.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mddose.errors import MddoseError

#: Signed distances enter as tanh(sdf / SDF_SCALE_MM): about linear within ±15 mm of a surface, saturating by ~9 cm.
SDF_SCALE_MM = 30.0


def parse_priors(where: str, value: Any):
    """``value`` (None, a PriorsSpec or its JSON object) as a :class:`~mddose.data.priors.PriorsSpec` or None."""
    from mddose.data.priors import PriorsSpec

    if value is None or isinstance(value, PriorsSpec):
        return value
    if not isinstance(value, dict):
        raise MddoseError(f"{where}: priors must be a JSON object (names, beams, dose) or null, got {value!r}")
    return PriorsSpec.from_dict(value)


def prior_names(spec, targets: Sequence[str]) -> tuple[str, ...]:
    """Channel names of ``spec`` for a config whose target ROIs are ``targets`` (() without priors)."""
    if spec is None:
        return ()
    from mddose.data.priors import channel_names

    return tuple(channel_names(spec, list(targets)))


def prior_pads(names: Sequence[str]) -> tuple[float, ...]:
    """The padding value of each prior channel: 1 (far) for a signed distance, 0 for the others."""
    return tuple(1.0 if n.startswith("sdf_") else 0.0 for n in names)


def _field_index(spec, names: Sequence[str]) -> dict[str, int]:
    return {n: i for i, n in enumerate(names) if spec is not None and n in spec.arrangement.channel_names()}


def transform_permutation(spec, names: Sequence[str], *, flip_x: bool = False, flip_y: bool = False,
                          rotate_deg: float = 0.0) -> tuple[int, ...]:
    """Permutation ``p`` of the prior channels ``names`` to apply with a flip / axial rotation: after
    transforming every channel as an image, channel ``j`` takes the transformed channel ``p[j]`` (the field
    the transform moves onto ``j``'s angle). Identity for scalar priors.

    Raises:
        MddoseError: the transform takes a field outside the arrangement.
    """
    from mddose.data.priors import AxialTransform

    perm = list(range(len(names)))
    index = _field_index(spec, names)
    if not index:
        return tuple(perm)
    t = AxialTransform(flip_y=flip_y, flip_x=flip_x, rotate_deg=rotate_deg)
    angles = spec.arrangement.gantry_deg
    by_angle = spec.arrangement.channel_names()
    for i, a in enumerate(angles):
        moved = t.angle(a)
        j = next((k for k, b in enumerate(angles) if min(abs(moved - b) % 360, 360 - abs(moved - b) % 360) < 1e-3),
                 None)
        if j is None:
            raise MddoseError(f"the augmentation (flips y/x {flip_y}/{flip_x}, rotation {rotate_deg:g}°) moves the "
                              f"{a:g}° field to {moved % 360:g}°, outside inputs.priors.beams")
        perm[index[by_angle[j]]] = index[by_angle[i]]
    return tuple(perm)


def check_augmentation(where: str, spec, names: Sequence[str], *, flip_x: bool = False, flip_y: bool = False,
                       rotations_deg: Sequence[float] = ()) -> None:
    """One-line MddoseError ``{where}: ...`` if an enabled augmentation takes a field outside the arrangement."""
    if not _field_index(spec, names):
        return
    checks = [("flip_x", {"flip_x": True}, flip_x), ("flip_y", {"flip_y": True}, flip_y)]
    checks += [(f"a rotation by {r:g}°", {"rotate_deg": r}, True) for r in rotations_deg]
    for label, kw, on in checks:
        if not on:
            continue
        try:
            transform_permutation(spec, names, **kw)
        except MddoseError:
            raise MddoseError(f"{where}: {label} would move the beams of inputs.priors outside their arrangement "
                              f"({', '.join(f'{a:g}' for a in spec.arrangement.gantry_deg)}°); turn it off or use "
                              "priors without per-field beams") from None


def patient_priors(patient, spec, targets: Sequence[str], reference_dose: float) -> np.ndarray:
    """(K, Z, Y, X) float32: the prior channels of ``patient`` on its own grid (see the module docstring).

    Raises:
        MddoseError (one line naming the patient) when beam priors are asked of a patient without a target, or
        when its RTPLAN's fields differ from the spec's per-field channels.
    """
    from mddose.data.priors import arrangement_for, patient_rtplan, target_levels
    from mddose.data.priors.cache import cached_priors
    from mddose.data.priors.distance import far_value, target_sdfs

    names = prior_names(spec, targets)
    rtplan = patient_rtplan(patient.meta)
    arrangement = arrangement_for(rtplan, spec.arrangement, strict=False)
    raw = cached_priors(patient, spec, arrangement if rtplan is not None else None)
    if "sdf" in spec.names and not set(target_levels(patient)) <= set(targets):
        raw.update(target_sdfs(patient.masks, list(targets), patient.shape, patient.spacing))  # the config's union
    far = far_value(patient.shape, patient.spacing)
    out = np.empty((len(names), *patient.shape), dtype=np.float32)
    n_fields = max(len(arrangement.gantry_deg), 1)
    for k, name in enumerate(names):
        a = raw.get(name)
        if name.startswith("sdf_"):
            a = np.full(patient.shape, far, np.float32) if a is None else a
            np.tanh(a / np.float32(SDF_SCALE_MM), out=out[k])
        elif name == "beam_sum":
            out[k] = a / np.float32(n_fields)
        elif name == "prior_dose":
            out[k] = a / np.float32(reference_dose)
        else:
            out[k] = a
    if not np.isfinite(out).all():
        raise MddoseError(f"patient {patient.id}: its priors are not finite (check its CT and spacing)")
    return out
