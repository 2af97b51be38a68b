"""2D slice representation that MD-Dose trains on, and its inverse.

MD-Dose (Sec. 2–3 of the paper) works on axial slices resized to ``size × size`` (256 in the paper):
a dose map ``x ∈ R^{1×H×W}`` conditioned on a structure image ``c ∈ R^{(2+O)×H×W}``:

* channel 0 — CT, clipped to ``ct_clip`` HU and scaled to ``[-1, 1]`` (or ``[0, 1]``);
* channel 1 — all targets in ONE channel: each voxel holds its highest covering prescription divided
  by the highest prescription of the configured targets (PTV70 → 1.0, PTV63 → 0.9, PTV56 → 0.8);
* channels 2… — one binary mask per OAR in ``cfg.oars`` order;
* with ``neighbours = k > 0`` (2.5D), then for j = 1…k the four channels ``CT-j, PTV-j, CT+j, PTV+j``:
  the CT and PTV channels of the slices j below and j above (indices clamped at the volume's ends), so
  C = 2 + O + 4k (:attr:`SliceConfig.channel_names`).

A ROI missing from a patient gives an empty channel and is listed in :attr:`SliceArrays.missing`.
The dose target is ``dose / reference_dose``. Each slice also carries its possible-dose ``mask`` (uint8 0/1,
resized like the dose and kept where ≥ 0.5): the patient's possible-dose mask, else its ``Body``, else all
ones (zero in the square padding) — the region a loss can be weighted on.

**Geometry.** Each (Y, X) slice is padded symmetrically to a square (CT with air, masks and dose with 0)
and then resized to ``size × size``: no resize when the square side already equals ``size`` (exact);
``area`` (box average, anti-aliased) when shrinking; ``bilinear`` (``align_corners=False``) when
enlarging. The same rule applies to every channel: masks become partial-volume fractions in [0, 1]
rather than nearest-neighbour staircases, so no boundary is shifted by half a voxel. The pixel
aspect ratio is not resampled (OpenKBP's and the phantoms' transverse voxels are square).
:func:`slices_to_volume` undoes it exactly in the same-size case (enlarge ↔ shrink otherwise).

**Crop** (``crop="dose_box"``). Before padding, every slice of a patient is cut to one box
``(y0, y1, x0, x1)`` (:func:`dose_box`): the (y, x) bounding box of the possible-dose mask (else ``Body``)
over the whole volume, widened by ``crop_margin`` voxels, then its shorter side widened to the longer one
(centred, shifted to stay inside the grid: real anatomy rather than padding; only a grid too narrow for
the square is padded, as above). The model thus sees the treated region at a higher resolution;
:func:`slices_to_volume` recomputes the same box from the patient and puts the slices back into it (zero
outside). ``crop="none"`` is the box of the whole grid.

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

from mddose.data.inputs.common import (InputConfig, check_fits_memory, config_number, ct_window, drop_empty_rois, flag,
                                      roi_names)
from mddose.data.patient import OPENKBP_OARS, OPENKBP_TARGETS, Patient
from mddose.errors import MddoseError

CT_SCALES = ("[-1,1]", "[0,1]")
SELECTIONS = ("dose", "mask", "all")
CROPS = ("none", "dose_box")
#: ``torch.rot90(·, k, (-2, -1))`` turns the (y, x) plane by −90°·k in the gantry sense of
#: :func:`mddose.data.inputs.volume.rotate_axial` (clockwise seen from the feet for positive angles).
ROT90_DEG = (-90.0, -180.0, -270.0)


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
        crop: ``"none"`` (whole grid) or ``"dose_box"`` (the possible-dose box, see the module docstring).
        crop_margin: voxels added on each side of the possible-dose box (``crop="dose_box"`` only).
        neighbours: 2.5D: k ≥ 0 slices below and above whose CT and PTV are extra channels (0 = plain 2D).
        priors: dose priors as extra channels (a :class:`~mddose.data.priors.PriorsSpec`, JSON object, or None:
            none), after the others (:mod:`mddose.data.inputs.prior_channels`).
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
    crop: str = "none"
    crop_margin: int = 8
    neighbours: int = 0
    priors: Any = None

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
        if self.crop not in CROPS:
            raise MddoseError(f"{w}: crop must be one of {CROPS}, got {self.crop!r}")
        set_("crop_margin", config_number(w, "crop_margin", self.crop_margin, 0))
        set_("neighbours", config_number(w, "neighbours", self.neighbours, 0))
        self._check_priors()
        from mddose.data.inputs.prior_channels import check_augmentation

        check_augmentation(w, self.priors, self.prior_names, flip_x=self.flip_x, flip_y=self.flip_y,
                           rotations_deg=ROT90_DEG if self.rot90 else ())
        check_fits_memory(w, self.size, self.channels, 2, f"{self.size}² slice")

    # ------------------------------------------------------------------ presets
    @classmethod
    def for_phantoms(cls, **overrides: Any) -> "SliceConfig":
        """Preset for :mod:`mddose.data.phantom` patients (target ``PTV``, thoracic OARs, 70 Gy reference)."""
        from mddose.data.phantom import PHANTOM_OARS

        kw = {"targets": ("PTV",), "oars": PHANTOM_OARS, "reference_dose": 70.0}
        kw.update(overrides)
        return cls(**kw)

    # ------------------------------------------------------------------ derived
    @property
    def base_channel_names(self) -> tuple[str, ...]:
        """``("CT", "PTV", *oars)``, then for j = 1…neighbours ``"CT-j", "PTV-j", "CT+j", "PTV+j"`` (C = 2 + len(oars)
        + 4 · neighbours, then the priors' channels)."""
        extra = [f"{c}{s}{j}" for j in range(1, self.neighbours + 1) for s in "-+" for c in ("CT", "PTV")]
        return ("CT", "PTV", *self.oars, *extra)

    @property
    def ct_channels(self) -> tuple[int, ...]:
        """Indices of the CT channels (padded with air): 0 and each neighbour's CT."""
        base = 2 + len(self.oars)
        return (0, *(base + 2 * i for i in range(2 * self.neighbours)))

    @property
    def air_value(self) -> float:
        """The CT channels' value for air (−1000 HU), their padding value."""
        return float(_ct_scaled(np.array([-1000.0], dtype=np.float32), self)[0])

    def build_key(self) -> dict:
        """The fields that change the built slice arrays (augmentation flags excluded)."""
        d = self.to_dict()
        for k in ("flip_x", "flip_y", "rot90"):
            d.pop(k)
        if d["priors"] is None:     # keys of configs without priors as before the field existed
            d.pop("priors")
        return d


@dataclass
class SliceArrays:
    """The slices of one patient.

    Attributes:
        cond: (S, C, H, W) float32 conditioning channels (see :attr:`SliceConfig.channel_names`).
        dose: (S, 1, H, W) float32 dose / reference_dose, or None (no dose).
        z: (S,) int64 axial index of each slice in the patient grid.
        mask: (S, 1, H, W) uint8 0/1 possible-dose mask of each slice (see the module docstring).
        box: (y0, y1, x0, x1) region of the patient's (Y, X) grid the slices show (:func:`dose_box`).
        missing: configured ROI names absent from the patient (their channels are empty).
        patient_id: the patient's id.
    """

    cond: np.ndarray
    dose: np.ndarray | None
    z: np.ndarray
    mask: np.ndarray | None = None
    box: tuple[int, int, int, int] | None = None
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


def dose_region(patient: Patient) -> np.ndarray | None:
    """(Z, Y, X) bool: the possible-dose mask, else the ``Body`` mask, else None (everywhere)."""
    if patient.possible_dose_mask is not None:
        return patient.possible_dose_mask
    return patient.masks.get("Body")


def _widen(a: int, b: int, want: int, n: int) -> tuple[int, int]:
    """``[a, b)`` widened (centred) to ``min(want, n)`` and shifted to lie inside ``[0, n)``."""
    want = min(want, n)
    a = min(max(a - (want - (b - a)) // 2, 0), n - want)
    return a, a + want


def dose_box(patient: Patient, cfg: SliceConfig) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the (Y, X) region the slices of ``patient`` show (half-open, in voxels).

    ``crop="none"``, or no possible-dose mask / ``Body`` (or an empty one): the whole grid. ``"dose_box"``:
    the bounding box of :func:`dose_region` over all slices, ``crop_margin`` wider on each side (clamped to
    the grid), then square where the grid allows (see the module docstring). Deterministic: training and
    :func:`slices_to_volume` get the same box from the same patient.
    """
    ny, nx = patient.shape[1:]
    region = dose_region(patient) if cfg.crop == "dose_box" else None
    plane = region.any(axis=0) if region is not None else None
    if plane is None or not plane.any():
        return 0, ny, 0, nx
    ys, xs = np.nonzero(plane.any(axis=1))[0], np.nonzero(plane.any(axis=0))[0]
    m = cfg.crop_margin
    y0, y1 = max(int(ys[0]) - m, 0), min(int(ys[-1]) + 1 + m, ny)
    x0, x1 = max(int(xs[0]) - m, 0), min(int(xs[-1]) + 1 + m, nx)
    side = max(y1 - y0, x1 - x0)
    return (*_widen(y0, y1, side, ny), *_widen(x0, x1, side, nx))


def _check_box(box, shape_yx: tuple[int, int]) -> tuple[int, int, int, int]:
    y0, y1, x0, x1 = (int(v) for v in box)
    if not (0 <= y0 < y1 <= shape_yx[0] and 0 <= x0 < x1 <= shape_yx[1]):
        raise MddoseError(f"slice box {tuple(box)} does not lie inside the (Y, X) grid {tuple(shape_yx)}")
    return y0, y1, x0, x1


def _square_resized(a: np.ndarray, size: int, pads: tuple[float, ...] | None = None) -> np.ndarray:
    """(S, C, h, w) float32 → (S, C, size, size) float32: padded symmetrically to a square (channel c with
    ``pads[c]``, default 0), then :func:`resize_square`."""
    import torch

    h, w = a.shape[-2:]
    top, bottom, left, right, side = square_padding((h, w))
    if side != h or side != w:
        a = np.pad(a, ((0, 0), (0, 0), (top, bottom), (left, right)))
        for c, v in enumerate(pads or ()):
            if v:
                a[:, c, :top], a[:, c, side - bottom:] = v, v
                a[:, c, :, :left], a[:, c, :, side - right:] = v, v
    return np.ascontiguousarray(resize_square(torch.from_numpy(a), size).numpy(), dtype=np.float32)


def _ct_scaled(ct: np.ndarray, cfg: SliceConfig) -> np.ndarray:
    lo, hi = cfg.ct_clip
    v = (np.clip(ct, lo, hi) - lo) / (hi - lo)
    return (2.0 * v - 1.0 if cfg.ct_scale == "[-1,1]" else v).astype(np.float32)


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
    """Slice, crop, stack and resize one patient (see the module docstring).

    Returns:
        :class:`SliceArrays` with cond (S, C, size, size) float32, dose (S, 1, size, size) float32 in
        reference-dose units (None if the patient has no dose), mask (S, 1, size, size) uint8, z (S,) int64
        and the box (y0, y1, x0, x1) of :func:`dose_box`.
    """
    patient, _ = drop_empty_rois(patient, cfg.targets)
    z = select_slices(patient, cfg, for_prediction)
    missing: list[str] = []
    box = dose_box(patient, cfg)
    y0, y1, x0, x1 = box
    yx = (slice(y0, y1), slice(x0, x1))
    n_oar, nz = len(cfg.oars), patient.shape[0]
    cond = np.empty((len(z), cfg.channels, y1 - y0, x1 - x0), dtype=np.float32)
    cond[:, 0] = _ct_scaled(patient.ct[(z, *yx)], cfg)
    cond[:, 1] = _target_channel(patient, cfg, z, missing)[(slice(None), *yx)]
    for i, name in enumerate(cfg.oars):
        if name in patient.masks:
            cond[:, 2 + i] = patient.masks[name][(z, *yx)]
        else:
            cond[:, 2 + i] = 0.0
            missing.append(name)
    for j in range(1, cfg.neighbours + 1):          # 2.5D: CT-j, PTV-j, CT+j, PTV+j
        for k, zn in enumerate((np.maximum(z - j, 0), np.minimum(z + j, nz - 1))):
            c = 2 + n_oar + 4 * (j - 1) + 2 * k
            cond[:, c] = _ct_scaled(patient.ct[(zn, *yx)], cfg)
            cond[:, c + 1] = _target_channel(patient, cfg, zn, [])[(slice(None), *yx)]
    if cfg.priors is not None:
        from mddose.data.inputs.prior_channels import patient_priors

        first = len(cfg.base_channel_names)
        cond[:, first:] = patient_priors(patient, cfg.priors, cfg.targets, cfg.reference_dose)[(slice(None), z, *yx)
                                                                                               ].transpose(1, 0, 2, 3)
    cond = _square_resized(cond, cfg.size, cfg.pad_values)
    dose = None
    if patient.dose is not None:
        d = (patient.dose[(z, *yx)] / np.float32(cfg.reference_dose))[:, None].astype(np.float32)
        dose = _square_resized(d, cfg.size)
    region = dose_region(patient)
    m = region[(z, *yx)][:, None].astype(np.float32) if region is not None \
        else np.ones((len(z), 1, y1 - y0, x1 - x0), np.float32)
    mask = (_square_resized(m, cfg.size) >= 0.5).astype(np.uint8)
    missing_t = tuple(dict.fromkeys(missing))
    return SliceArrays(cond=cond, dose=dose, z=z, mask=mask, box=box, missing=missing_t, patient_id=patient.id)


def slices_to_volume(pred, z, patient: Patient, cfg: SliceConfig,
                     box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Put predicted slices back on the patient's grid.

    Args:
        pred: (S, 1, H, W) (numpy or torch) in reference-dose units, H = W = ``cfg.size``.
        z: (S,) axial indices of the slices; repeated indices are averaged.
        patient: the patient (grid shape, possible-dose mask, and the crop box).
        cfg: the slice config used to make the slices.
        box: (y0, y1, x0, x1) the slices show (:attr:`SliceArrays.box`); default :func:`dose_box` of
            ``patient`` — the same box :func:`patient_to_slices` used.

    Returns:
        (Z, Y, X) float32 Gy: inverse resize, padding removed, put back into the box, × reference_dose,
        clipped at 0, zero outside the box and the possible-dose mask; slices not predicted are 0.
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
    y0, y1, x0, x1 = _check_box(dose_box(patient, cfg) if box is None else box, (ny, nx))
    h, w = y1 - y0, x1 - x0
    top, bottom, left, right, side = square_padding((h, w))
    back = resize_square(p, side).numpy()[:, 0, top:top + h, left:left + w]
    out = np.zeros(patient.shape, dtype=np.float32)
    inner = out[:, y0:y1, x0:x1]                    # a view: writes go to out
    counts = np.bincount(z, minlength=nz)
    if (counts > 1).any():  # repeated slices (e.g. several samples): average them
        np.add.at(inner, z, back)
        out[counts > 1] /= counts[counts > 1, None, None]
    else:
        inner[z] = back
    out *= np.float32(cfg.reference_dose)
    np.clip(out, 0.0, None, out=out)
    out[~patient.dose_mask()] = 0.0
    return out


# ---------------------------------------------------------------------------------------------- augmentation
def augment_item(item: dict, cfg: SliceConfig, perm=None, generator=None) -> dict:
    """Random joint flips / 90° rotations of an item's ``"cond"`` (C, H, W), ``"dose"`` (1, H, W) and, if
    present, ``"mask"`` (1, H, W) torch tensors; other keys are copied unchanged (a new dict is returned).

    Uses torch's RNG (``generator`` if given) so DataLoader worker seeding makes it reproducible; the draws
    (x-flip coin, y-flip coin, rotation) are the same whatever the keys. A left–right flip also swaps paired
    L/R OAR channels (``perm``, default ``cfg.mirror_permutation``; the 2.5D neighbour channels are CT and
    PTV, flipped in place, never swapped).
    """
    import torch

    def coin() -> bool:
        return bool(torch.randint(0, 2, (1,), generator=generator).item())

    keys = [k for k in ("cond", "dose", "mask") if k in item]
    t = {k: item[k] for k in keys}
    if cfg.flip_x and coin():
        t = {k: v.flip(-1) for k, v in t.items()}
        p = cfg.mirror_permutation if perm is None else perm
        if list(p) != list(range(t["cond"].shape[0])):
            t["cond"] = t["cond"][torch.as_tensor(np.asarray(p))]
    if cfg.flip_y and coin():
        t = {k: v.flip(-2) for k, v in t.items()}
        t["cond"] = _permuted(t["cond"], cfg.prior_permutation(flip_y=True))
    if cfg.rot90:
        k = int(torch.randint(0, 4, (1,), generator=generator).item())
        if k:
            t = {name: torch.rot90(v, k, (-2, -1)) for name, v in t.items()}
            t["cond"] = _permuted(t["cond"], cfg.prior_permutation(rotate_deg=ROT90_DEG[k - 1]))
    return {**item, **{k: v.contiguous() for k, v in t.items()}}


def _permuted(cond, perm: tuple[int, ...]):
    """``cond`` (C, H, W) with its channels permuted by ``perm`` (unchanged when ``perm`` is the identity)."""
    import torch

    return cond if list(perm) == list(range(cond.shape[0])) else cond[torch.as_tensor(perm)]


def augment_pair(cond, dose, cfg: SliceConfig, perm=None, generator=None):
    """:func:`augment_item` of cond (C, H, W) and dose (1, H, W) torch tensors; returns ``(cond, dose)``."""
    out = augment_item({"cond": cond, "dose": dose}, cfg, perm, generator)
    return out["cond"], out["dose"]
