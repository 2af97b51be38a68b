"""Per-voxel geometric features: the inputs of the gradient-boosted tree (:mod:`mddose.kinds.tree`).

A tree sees one row per voxel of the possible-dose mask (no image, no neighbourhood), so every feature is a
number that describes where the voxel sits relative to what a planner has before planning. For a
:class:`FeatureConfig` ``cfg`` the columns are, in this order (:attr:`FeatureConfig.channel_names`):

==================  ================================================================================  =======
name                value                                                                             unit
==================  ================================================================================  =======
``ct``              the CT, clipped to ``ct_clip``                                                     HU
``rx``              the highest prescription among the targets covering the voxel (0 outside)         Gy
priors              the prior channels of ``priors`` (:mod:`mddose.data.inputs.prior_channels`:        —
                    ``sdf_<t>`` as tanh(sdf / 30 mm), ``beam_<angle>``, ``beam_sum``, ``prior_dose``)
``depth``           distance to the surface of the dose region (possible-dose mask, else the body)     mm
``sdf_oar_<o>``     signed distance to each OAR of ``oars`` (negative inside; absent: the grid         mm
                    diagonal)
``dz dy dx``        offset from the centroid of the targets' union, along each axis                    mm
``r_axial``         distance from that centroid in the axial (y, x) plane                             mm
==================  ================================================================================  =======

A tree is invariant to monotonic transforms of a column, so the priors' tanh scaling is harmless.

Rows are only the voxels of the patient's possible-dose mask (:func:`patient_rows`); training draws
``voxels_per_patient`` of them at random per patient (:func:`sample_rows`), seeded per patient so that a run is
reproducible. Nothing is resampled: the features are computed on the patient's own grid at its own voxel size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mddose.data.inputs.common import InputConfig, config_number, ct_window, drop_empty_rois, roi_names
from mddose.data.patient import OPENKBP_OARS, OPENKBP_TARGETS, Patient, prescription_map
from mddose.errors import MddoseError

#: Columns after the priors besides the OAR distances: ``depth`` first, then the offsets.
OFFSET_NAMES = ("dz", "dy", "dx", "r_axial")
#: The default priors of a tree: all four kinds (OpenKBP's nine fields).
DEFAULT_PRIORS = {"names": ["sdf", "beams", "beam_sum", "prior_dose"]}


@dataclass(frozen=True)
class FeatureConfig(InputConfig):
    """How a patient becomes rows of per-voxel features (JSON-serialisable; stored with every tree checkpoint).

    Attributes:
        targets: target ROI names (their prescriptions give ``rx``; their union's centroid the offsets).
        oars: OAR names, one signed-distance column each, in this order.
        ct_clip: (low, high) HU window of the ``ct`` column.
        priors: the prior columns (a :class:`~mddose.data.priors.PriorsSpec` or its JSON object; default all four
            kinds, OpenKBP's nine fields); ``null`` for none.
        voxels_per_patient: training rows drawn per patient, uniformly from its possible-dose mask.
        reference_dose: Gy per unit of the ``prior_dose`` column (as in the other kinds' inputs).
        size: 0 — nothing is resampled (kept for the kinds' common interface).
    """

    targets: tuple[str, ...] = tuple(OPENKBP_TARGETS)
    oars: tuple[str, ...] = OPENKBP_OARS
    ct_clip: tuple[float, float] = (-1024.0, 1500.0)
    priors: Any = "default"
    voxels_per_patient: int = 20000
    reference_dose: float = 70.0
    size: int = 0

    WHERE = "feature config"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        w = self.WHERE
        set_("targets", roi_names(w, "targets", self.targets))
        set_("oars", roi_names(w, "oars", self.oars))
        if not self.targets:
            raise MddoseError(f"{w}: targets must name at least one ROI")
        set_("ct_clip", ct_window(w, self.ct_clip))
        set_("voxels_per_patient", config_number(w, "voxels_per_patient", self.voxels_per_patient, 1))
        set_("reference_dose", config_number(w, "reference_dose", self.reference_dose))
        if self.priors == "default":
            set_("priors", dict(DEFAULT_PRIORS))
        self._check_priors()
        if self.size != 0:
            raise MddoseError(f"{w}: size must be 0 (a tree's features are computed on the patient's own grid)")

    @classmethod
    def for_phantoms(cls, **overrides: Any) -> "FeatureConfig":
        """Preset for :mod:`mddose.data.phantom` patients (target ``PTV``, thoracic OARs)."""
        from mddose.data.phantom import PHANTOM_OARS

        return cls(**{"targets": ("PTV",), "oars": PHANTOM_OARS, "voxels_per_patient": 2000, **overrides})

    @property
    def base_channel_names(self) -> tuple[str, ...]:
        return ("ct", "rx")

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Every column's name, in order (see the module docstring)."""
        return (*self.base_channel_names, *self.prior_names, "depth", *(f"sdf_oar_{o}" for o in self.oars),
                *OFFSET_NAMES)

    @property
    def air_value(self) -> float:
        return float(max(-1000.0, self.ct_clip[0]))


def _centroid_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """(3,) mm: the centroid of ``mask`` (Z, Y, X) in voxel-centre mm from the grid's first voxel."""
    idx = np.argwhere(mask)
    return idx.mean(axis=0) * np.asarray(spacing, dtype=np.float64)


def feature_volumes(patient: Patient, cfg: FeatureConfig) -> np.ndarray:
    """(F, Z, Y, X) float32: every column of :attr:`FeatureConfig.channel_names` on the patient's grid.

    Raises:
        MddoseError (one line naming the patient): no target with voxels, or features that are not finite.
    """
    from mddose.data.inputs.prior_channels import patient_priors
    from mddose.data.priors import dose_region
    from mddose.data.priors.distance import inside_distance, signed_distance

    patient, _ = drop_empty_rois(patient, cfg.targets)
    shape, spacing = patient.shape, patient.spacing
    out = np.empty((len(cfg.channel_names), *shape), dtype=np.float32)
    out[0] = np.clip(patient.ct, *cfg.ct_clip)
    out[1] = prescription_map(patient.masks, {t: patient.prescriptions.get(t, 0.0) for t in cfg.targets
                                              if t in patient.masks}, shape)
    k = 2
    if cfg.priors is not None:
        pri = patient_priors(patient, cfg.priors, cfg.targets, cfg.reference_dose)
        out[k:k + len(pri)] = pri
        k += len(pri)
    out[k] = inside_distance(dose_region(patient), spacing)
    k += 1
    for o in cfg.oars:
        m = patient.masks.get(o)
        out[k] = signed_distance(m if m is not None else np.zeros(shape, bool), spacing)
        k += 1
    union = np.zeros(shape, dtype=bool)
    for t in cfg.targets:
        if t in patient.masks:
            union |= patient.masks[t]
    centre = _centroid_mm(union, spacing)
    for axis in range(3):
        coord = np.arange(shape[axis], dtype=np.float32) * np.float32(spacing[axis]) - np.float32(centre[axis])
        view = [1, 1, 1]
        view[axis] = shape[axis]
        out[k + axis] = coord.reshape(view)
    out[k + 3] = np.hypot(out[k + 1], out[k + 2])
    if not np.isfinite(out).all():
        bad = cfg.channel_names[int(np.argwhere(~np.isfinite(out).all(axis=(1, 2, 3)))[0, 0])]
        raise MddoseError(f"patient {patient.id}: its feature {bad!r} is not finite (check its CT and spacing)")
    return out


def patient_rows(patient: Patient, cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(rows (N, F) float32, mask (Z, Y, X) bool)``: the features of every voxel of the patient's possible-dose
    mask (``mask``; C order of the voxels), for prediction."""
    vols = feature_volumes(patient, cfg)
    mask = patient.dose_mask()
    return np.ascontiguousarray(vols[:, mask].T), mask


def sample_rows(patient: Patient, cfg: FeatureConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows (n, F) float32, dose (n,) float32 Gy)``: ``cfg.voxels_per_patient`` voxels (or all, if fewer)
    drawn uniformly without replacement from the possible-dose mask with ``numpy.random.default_rng(seed)``.

    Raises:
        MddoseError: the patient has no dose or an empty possible-dose mask.
    """
    if patient.dose is None:
        raise MddoseError(f"patient {patient.id}: has no dose (needed for training)")
    mask = patient.dose_mask()
    where = np.flatnonzero(mask)
    if where.size == 0:
        raise MddoseError(f"patient {patient.id}: its possible-dose mask is empty")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(where, size=min(cfg.voxels_per_patient, where.size), replace=False))
    vols = feature_volumes(patient, cfg).reshape(len(cfg.channel_names), -1)
    return np.ascontiguousarray(vols[:, pick].T), patient.dose.reshape(-1)[pick].astype(np.float32)
