"""2D slice representation that MD-Dose trains on, and its inverse.

MD-Dose (Sec. 2–3 of the paper) works on axial slices resized to ``size × size`` (256 in the paper):
a dose map ``x ∈ R^{1×H×W}`` conditioned on a structure image ``c ∈ R^{(2+O)×H×W}``:

* channel 0 — CT, clipped to ``ct_clip`` HU and scaled to ``[-1, 1]`` (or ``[0, 1]``);
* channel 1 — all targets in ONE channel: each voxel holds its highest covering prescription divided
  by the highest prescription of the configured targets (PTV70 → 1.0, PTV63 → 0.9, PTV56 → 0.8);
* channels 2… — one binary mask per OAR in ``cfg.oars`` order.

A ROI missing from a patient gives an empty channel and is listed in :attr:`SliceArrays.missing`.
The dose target is ``dose / reference_dose``.

**Geometry.** Each (Y, X) slice is padded symmetrically to a square (CT with air, masks and dose with 0)
and then resized to ``size × size``: no resize when the square side already equals ``size`` (exact);
``area`` (box average, anti-aliased) when shrinking; ``bilinear`` (``align_corners=False``) when
enlarging. The same rule applies to every channel: masks become partial-volume fractions in [0, 1]
rather than nearest-neighbour staircases, so no boundary is shifted by half a voxel. The pixel
aspect ratio is not resampled (OpenKBP's and the phantoms' transverse voxels are square).
:func:`slices_to_volume` undoes it exactly in the same-size case (enlarge ↔ shrink otherwise).

**Selection.** ``slice_selection="dose"`` keeps axial slices with any dose > 0 (the paper's "images with
dose"); for prediction (or ``"mask"``) the slices that intersect the possible-dose mask (or ``Body``, or all
slices if neither exists); ``"all"`` keeps every slice.

:class:`~mddose.data.inputs.slice_dataset.SliceDataset` (a torch ``Dataset``) keeps every slice of a list
of patients in two contiguous arrays, from the on-disk cache of :mod:`mddose.data.inputs.slice_cache`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mddose.data.inputs.common import InputConfig, config_number, ct_window, flag, roi_names
from mddose.data.patient import OPENKBP_OARS, OPENKBP_TARGETS, Patient
from mddose.errors import MddoseError

CT_SCALES = ("[-1,1]", "[0,1]")
SELECTIONS = ("dose", "mask", "all")


@dataclass(frozen=True)
class SliceConfig(InputConfig):
    """How patients become 2D training slices (JSON-serialisable; stored with every checkpoint).

    Attributes:
        size: output height = width (pixels); 256 in the paper, 128 = OpenKBP's native grid.
        targets: target ROI names merged into the PTV channel (scaled by prescription).
        oars: OAR names, one channel each, in this order.
        ct_clip: (low, high) HU window.
        ct_scale: ``"[-1,1]"`` or ``"[0,1]"``.
        reference_dose: Gy per unit of the dose channel (dose / reference_dose ∈ ~[0, 1]).
        slice_selection: ``"dose"``, ``"mask"`` or ``"all"`` (see the module docstring).
        flip_x: augmentation: random left–right mirror (paired L/R OAR channels are swapped).
        flip_y: augmentation: random anterior–posterior flip (not anatomical; off by default).
        rot90: augmentation: random multiple-of-90° rotation (not anatomical; off by default).
    """

    size: int = 128
    targets: tuple[str, ...] = tuple(OPENKBP_TARGETS)
    oars: tuple[str, ...] = OPENKBP_OARS
    ct_clip: tuple[float, float] = (-1000.0, 1500.0)
    ct_scale: str = "[-1,1]"
    reference_dose: float = 80.0
    slice_selection: str = "dose"
    flip_x: bool = True
    flip_y: bool = False
    rot90: bool = False

    WHERE = "slice config"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        w = self.WHERE
        set_("targets", roi_names(w, "targets", self.targets))
        set_("oars", roi_names(w, "oars", self.oars))
        set_("ct_clip", ct_window(w, self.ct_clip))
        set_("size", config_number(w, "size", self.size, 8))
        if not self.targets:
            raise MddoseError(f"{w}: targets must name at least one ROI")
        names = self.targets + self.oars
        if len(set(names)) != len(names):
            raise MddoseError(f"{w}: duplicate ROI names in targets/oars {list(names)}")
        if self.ct_scale not in CT_SCALES:
            raise MddoseError(f"{w}: ct_scale must be one of {CT_SCALES}, got {self.ct_scale!r}")
        set_("reference_dose", config_number(w, "reference_dose", self.reference_dose))
        if self.slice_selection not in SELECTIONS:
            raise MddoseError(f"{w}: slice_selection must be one of {SELECTIONS}, got {self.slice_selection!r}")
        for key in ("flip_x", "flip_y", "rot90"):
            flag(w, key, getattr(self, key))

    # ------------------------------------------------------------------ presets
    @classmethod
    def for_phantoms(cls, **overrides: Any) -> "SliceConfig":
        """Preset for :mod:`mddose.data.phantom` patients (target ``PTV``, thoracic OARs, 70 Gy reference)."""
        from mddose.data.phantom import PHANTOM_OARS

        kw = {"targets": ("PTV",), "oars": PHANTOM_OARS, "reference_dose": 70.0}
        kw.update(overrides)
        return cls(**kw)

    # ------------------------------------------------------------------ derived
    def build_key(self) -> dict:
        """The fields that change the built slice arrays (augmentation flags excluded)."""
        d = self.to_dict()
        for k in ("flip_x", "flip_y", "rot90"):
            d.pop(k)
        return d


@dataclass
class SliceArrays:
    """The slices of one patient.

    Attributes:
        cond: (S, C, H, W) float32 conditioning channels (see :attr:`SliceConfig.channel_names`).
        dose: (S, 1, H, W) float32 dose / reference_dose, or None (no dose).
        z: (S,) int64 axial index of each slice in the patient grid.
        missing: configured ROI names absent from the patient (their channels are empty).
        patient_id: the patient's id.
    """

    cond: np.ndarray
    dose: np.ndarray | None
    z: np.ndarray
    missing: tuple[str, ...] = ()
    patient_id: str = ""
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- geometry
def square_padding(shape_yx: tuple[int, int]) -> tuple[int, int, int, int, int]:
    """(top, bottom, left, right, side): symmetric padding of a (Y, X) slice to a square of ``side``."""
    y, x = shape_yx
    side = max(y, x)
    top, left = (side - y) // 2, (side - x) // 2
    return top, side - y - top, left, side - x - left, side


def resize_square(x, size: int):
    """Resize torch (N, C, s, s) to (N, C, size, size): identity, ``area`` (shrink) or ``bilinear`` (enlarge)."""
    import torch.nn.functional as F

    s = x.shape[-1]
    if s == size:
        return x
    if size < s:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _ct_scaled(ct: np.ndarray, cfg: SliceConfig) -> np.ndarray:
    lo, hi = cfg.ct_clip
    v = (np.clip(ct, lo, hi) - lo) / (hi - lo)
    return (2.0 * v - 1.0 if cfg.ct_scale == "[-1,1]" else v).astype(np.float32)


def _air_value(cfg: SliceConfig) -> float:
    return float(_ct_scaled(np.array([-1000.0], dtype=np.float32), cfg)[0])


def select_slices(patient: Patient, cfg: SliceConfig, for_prediction: bool = False) -> np.ndarray:
    """(S,) int64 axial indices selected by ``cfg.slice_selection`` (``"dose"`` → ``"mask"`` for prediction)."""
    mode = cfg.slice_selection
    if mode == "dose" and for_prediction:
        mode = "mask"
    if mode == "dose":
        if patient.dose is None:
            raise MddoseError(f"patient {patient.id}: has no dose, cannot select the slices with dose")
        keep = (patient.dose > 0).any(axis=(1, 2))
    elif mode == "mask":
        region = patient.possible_dose_mask if patient.possible_dose_mask is not None \
            else patient.masks.get("Body")
        keep = region.any(axis=(1, 2)) if region is not None else np.ones(patient.shape[0], bool)
    else:
        keep = np.ones(patient.shape[0], bool)
    return np.nonzero(keep)[0].astype(np.int64)


def _target_channel(patient: Patient, cfg: SliceConfig, z: np.ndarray, missing: list[str]) -> np.ndarray:
    """(S, Y, X) float32: highest covering prescription / highest prescription of the configured targets."""
    out = np.zeros((len(z), *patient.shape[1:]), dtype=np.float32)
    present = [t for t in cfg.targets if t in patient.masks]
    missing.extend(t for t in cfg.targets if t not in patient.masks)
    for t in present:
        if t not in patient.prescriptions:
            raise MddoseError(f"patient {patient.id}: target {t!r} has a mask but no prescription")
    if not present:
        return out
    top = max(float(patient.prescriptions[t]) for t in cfg.targets if t in patient.prescriptions)
    for t in sorted(present, key=lambda n: patient.prescriptions[n]):
        out[patient.masks[t][z]] = float(patient.prescriptions[t]) / top
    return out


def patient_to_slices(patient: Patient, cfg: SliceConfig, *, for_prediction: bool = False) -> SliceArrays:
    """Slice, stack and resize one patient (see the module docstring).

    Returns:
        :class:`SliceArrays` with cond (S, C, size, size) float32, dose (S, 1, size, size) float32 in
        reference-dose units (None if the patient has no dose) and z (S,) int64.
    """
    import torch

    z = select_slices(patient, cfg, for_prediction)
    missing: list[str] = []
    s_, (ny, nx) = len(z), patient.shape[1:]
    cond = np.empty((s_, cfg.channels, ny, nx), dtype=np.float32)
    cond[:, 0] = _ct_scaled(patient.ct[z], cfg)
    cond[:, 1] = _target_channel(patient, cfg, z, missing)
    for i, name in enumerate(cfg.oars):
        if name in patient.masks:
            cond[:, 2 + i] = patient.masks[name][z]
        else:
            cond[:, 2 + i] = 0.0
            missing.append(name)
    top, bottom, left, right, side = square_padding((ny, nx))
    pad = ((0, 0), (0, 0), (top, bottom), (left, right))
    if side != ny or side != nx:
        cond = np.pad(cond, pad)
        cond[:, 0, :top], cond[:, 0, side - bottom:] = _air_value(cfg), _air_value(cfg)
        cond[:, 0, :, :left], cond[:, 0, :, side - right:] = _air_value(cfg), _air_value(cfg)
    cond_t = resize_square(torch.from_numpy(cond), cfg.size)
    dose = None
    if patient.dose is not None:
        d = (patient.dose[z] / np.float32(cfg.reference_dose))[:, None].astype(np.float32)
        if side != ny or side != nx:
            d = np.pad(d, pad)
        dose = np.ascontiguousarray(resize_square(torch.from_numpy(d), cfg.size).numpy(), dtype=np.float32)
    missing_t = tuple(dict.fromkeys(missing))
    return SliceArrays(cond=np.ascontiguousarray(cond_t.numpy(), dtype=np.float32), dose=dose, z=z,
                       missing=missing_t, patient_id=patient.id)


def slices_to_volume(pred, z, patient: Patient, cfg: SliceConfig) -> np.ndarray:
    """Put predicted slices back on the patient's grid.

    Args:
        pred: (S, 1, H, W) (numpy or torch) in reference-dose units, H = W = ``cfg.size``.
        z: (S,) axial indices of the slices; repeated indices are averaged.
        patient: the patient (grid shape and possible-dose mask).
        cfg: the slice config used to make the slices.

    Returns:
        (Z, Y, X) float32 Gy: inverse resize, padding removed, × reference_dose, clipped at 0, zero
        outside the possible-dose mask; slices not predicted are 0.
    """
    import torch

    p = pred.detach().cpu().float() if isinstance(pred, torch.Tensor) else torch.from_numpy(
        np.asarray(pred, dtype=np.float32))
    z = np.asarray(z.cpu() if isinstance(z, torch.Tensor) else z, dtype=np.int64).reshape(-1)
    if p.ndim != 4 or p.shape[1] != 1 or p.shape[2] != cfg.size or p.shape[3] != cfg.size:
        raise MddoseError(f"prediction must have shape (S, 1, {cfg.size}, {cfg.size}), got {tuple(p.shape)}")
    if p.shape[0] != len(z):
        raise MddoseError(f"prediction has {p.shape[0]} slices but {len(z)} z indices were given")
    nz, ny, nx = patient.shape
    if len(z) and (z.min() < 0 or z.max() >= nz):
        raise MddoseError(f"slice indices must lie in [0, {nz}), got {z.min()}..{z.max()}")
    top, bottom, left, right, side = square_padding((ny, nx))
    back = resize_square(p, side).numpy()[:, 0, top:top + ny, left:left + nx]
    out = np.zeros(patient.shape, dtype=np.float32)
    counts = np.bincount(z, minlength=nz)
    if (counts > 1).any():  # repeated slices (e.g. several samples): average them
        np.add.at(out, z, back)
        out[counts > 1] /= counts[counts > 1, None, None]
    else:
        out[z] = back
    out *= np.float32(cfg.reference_dose)
    np.clip(out, 0.0, None, out=out)
    out[~patient.dose_mask()] = 0.0
    return out


# ---------------------------------------------------------------------------------------------- augmentation
def augment_pair(cond, dose, cfg: SliceConfig, perm=None, generator=None):
    """Random joint flips / 90° rotations of cond (C, H, W) and dose (1, H, W) torch tensors.

    Uses torch's RNG (``generator`` if given) so DataLoader worker seeding makes it reproducible.
    A left–right flip also swaps paired L/R OAR channels (``perm``, default ``cfg.mirror_permutation``).
    """
    import torch

    def coin() -> bool:
        return bool(torch.randint(0, 2, (1,), generator=generator).item())

    if cfg.flip_x and coin():
        cond, dose = cond.flip(-1), dose.flip(-1)
        p = cfg.mirror_permutation if perm is None else perm
        if list(p) != list(range(cond.shape[0])):
            cond = cond[torch.as_tensor(np.asarray(p))]
    if cfg.flip_y and coin():
        cond, dose = cond.flip(-2), dose.flip(-2)
    if cfg.rot90:
        k = int(torch.randint(0, 4, (1,), generator=generator).item())
        if k:
            cond, dose = torch.rot90(cond, k, (-2, -1)), torch.rot90(dose, k, (-2, -1))
    return cond.contiguous(), dose.contiguous()
