"""3D whole-volume representation for the volume regression baselines (C3D, HD-UNet), and its inverse.

C3D (Liu et al. 2021, see ``papers/baselines.md``) regresses the dose of a whole ``S × S × S`` volume
(128³, OpenKBP's native grid) from ``2 + O`` input channels:

* channel 0 — CT clipped to ``ct_clip`` HU (default ``[-1024, 1500]``) divided by ``ct_divisor`` (1000);
* channel 1 — the targets: ``"sum"`` (C3D) = ``Σ_k PTV_k · rx_k / reference_dose``, or ``"max"`` = the
  highest prescription covering a voxel / ``reference_dose``;
* channels 2… — one mask per OAR in ``cfg.oars`` order (a missing ROI gives zeros and is listed in
  :attr:`VolumeArrays.missing`).

The target is ``dose / reference_dose`` (70 Gy) and the loss / evaluation region is the possible-dose mask.

**Geometry.** A patient whose grid already is ``S³`` is used as is (no resampling: exact). Otherwise each
axis is resized to ``S`` independently (:mod:`mddose.data.inputs.resample`: **area** along an axis that
shrinks, **linear** along one that grows, every channel alike). Masks are resampled as
partial-volume fractions (in ``[0, 1]``, like the 2D slices), the possible-dose ``mask`` is then
thresholded at 0.5. The aspect ratio is not preserved (each axis is stretched to ``S``), which is why a
valid voxel ``spacing`` is required whenever resampling happens. :func:`volume_to_patient` applies the
same per-axis rule from ``S`` back to the patient's shape (linear where the patient's axis is longer,
area where it is shorter), then × ``reference_dose``, clip at 0 and zero outside the possible-dose
mask (C3D's post-processing).

**Augmentation** (C3D, :func:`augment_volume`): with p 0.8 flip z (p 0.5) and x (p 0.5; an x flip swaps
the paired L/R OAR channels); with p 0.3 rotate in the axial (y, x) plane about the grid centre by
``40° · k``, ``k ∈ {0..8}``, nearest neighbour by exact inverse index mapping; then a random integer
shift of up to ``translate`` voxels per axis, drawn inside the range that keeps the possible-dose
region's bounding box on the grid. Voxels that enter the grid are padded with air for the CT channel
(``clip(-1000 HU) / ct_divisor``) and 0 for every other channel, the dose and the mask.
**Test-time augmentation** (:func:`tta_predict`): mean over the flips none, z, x, z+x.

**Grid** (``cfg.grid``): ``"resample"`` (the default) is the geometry above, whole patients on ``size``³.
``"crop"`` keeps the original voxel size: the patient is cut to the possible-dose box widened by
``crop_margin`` voxels, training draws ``size``³ patches inside it and prediction runs on the whole crop
(:mod:`mddose.data.inputs.volume_crop`). The channels are the same (:func:`native_volume`) either way.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mddose.data.inputs.common import (InputConfig, check_fits_memory, config_number, ct_window, drop_empty_rois, flag,
                                      roi_names)
from mddose.data.inputs.resample import check_spacing, resize_volume, to_grid
from mddose.data.io import load_patient
from mddose.data.patient import OPENKBP_OARS, OPENKBP_TARGETS, Patient
from mddose.errors import MddoseError
from mddose.utils.fs import describe_error
from mddose.utils.log import logger

TARGET_CHANNELS = ("sum", "max")
#: The geometries of :attr:`VolumeConfig.grid`: whole patients resampled to ``size``³, or the possible-dose box
#: at the original voxel size (``size``³ training patches).
GRIDS = ("resample", "crop")
#: How a crop is predicted (:attr:`VolumeConfig.crop_predict`).
CROP_PREDICT = ("windows", "whole")
#: HU of air: the CT channel's padding value is ``clip(AIR_HU) / ct_divisor``.
AIR_HU = -1000.0
#: C3D's augmentation probabilities and rotation step.
FLIP_P, ROTATE_P, ROTATE_STEP_DEG = 0.8, 0.3, 40
#: The flips whose mean is the test-time augmentation (dims of a (B, C, Z, Y, X) tensor).
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (4,), (2, 4))


@dataclass(frozen=True)
class VolumeConfig(InputConfig):
    """How patients become whole model volumes (JSON-serialisable; stored with every 3D checkpoint).

    Attributes:
        size: the model's cubic grid edge S: ``grid="resample"``: patients are resampled to S³ when their grid
            differs; ``grid="crop"``: the edge of the training patches (the model's ``grid_size``).
        targets: target ROI names merged into the PTV channel.
        oars: OAR names, one channel each, in this order.
        ct_clip: (low, high) HU window.
        ct_divisor: CT channel = clip(ct) / ct_divisor.
        reference_dose: Gy per unit of the dose channel; the PTV channel is in the same unit.
        target_channel: ``"sum"`` (Σ_k PTV_k · rx_k / reference) or ``"max"`` (highest covering rx / reference).
        flip: augmentation: with p 0.8, flip z (p 0.5) and x (p 0.5, swapping L/R OAR channels).
        rotate: augmentation: with p 0.3, rotate in the axial plane by a random multiple of 40° (nearest).
        translate: augmentation: random shift up to this many voxels per axis keeping the possible-dose
            region on the grid; 0 = off (``grid="crop"``: not used, the patches' positions are random).
        grid: ``"resample"`` (whole patient on S³) or ``"crop"`` (the possible-dose box + ``crop_margin`` at the
            original voxel size; see :mod:`mddose.data.inputs.volume_crop`).
        crop_margin: voxels added on each side of the possible-dose box (``grid="crop"``), clipped to the grid.
        crop_predict: ``grid="crop"``: predict the mean over overlapping S³ windows (``"windows"``, what the
            model was trained on) or the whole crop in one pass (``"whole"``).
        priors: dose priors as extra channels (a :class:`~mddose.data.priors.PriorsSpec`, JSON object, or None:
            none), after the others (:mod:`mddose.data.inputs.prior_channels`).
        residual: the residual form — the model predicts dose minus the prior dose (its ``prior_dose`` channel,
            which ``priors`` must hold, is added to its output: :attr:`residual_channel`).
    """

    size: int = 128
    targets: tuple[str, ...] = tuple(OPENKBP_TARGETS)
    oars: tuple[str, ...] = OPENKBP_OARS
    ct_clip: tuple[float, float] = (-1024.0, 1500.0)
    ct_divisor: float = 1000.0
    reference_dose: float = 70.0
    target_channel: str = "sum"
    flip: bool = True
    rotate: bool = True
    translate: int = 20
    grid: str = "resample"
    crop_margin: int = 8
    crop_predict: str = "windows"
    priors: Any = None
    residual: bool = False

    WHERE = "volume config"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        w = self.WHERE
        for key, low in (("size", 8), ("translate", 0), ("crop_margin", 0), ("ct_divisor", None),
                         ("reference_dose", None)):
            set_(key, config_number(w, key, getattr(self, key), low))
        set_("targets", roi_names(w, "targets", self.targets))
        set_("oars", roi_names(w, "oars", self.oars))
        names = self.targets + self.oars
        if not self.targets or len(set(names)) != len(names):
            raise MddoseError(f"{w}: targets must name ≥ 1 ROI and no ROI twice, got {list(names)}")
        set_("ct_clip", ct_window(w, self.ct_clip))
        if self.target_channel not in TARGET_CHANNELS:
            raise MddoseError(f"{w}: target_channel must be one of {TARGET_CHANNELS}, got {self.target_channel!r}")
        if self.grid not in GRIDS:
            raise MddoseError(f"{w}: grid must be one of {GRIDS}, got {self.grid!r}")
        if self.crop_predict not in CROP_PREDICT:
            raise MddoseError(f"{w}: crop_predict must be one of {CROP_PREDICT}, got {self.crop_predict!r}")
        for key in ("flip", "rotate", "residual"):
            flag(w, key, getattr(self, key))
        self._check_priors()
        if self.residual and "prior_dose" not in self.prior_names:
            raise MddoseError(f"{w}: residual needs the prior dose as an input: add \"prior_dose\" to priors.names")
        from mddose.data.inputs.prior_channels import check_augmentation

        check_augmentation(w, self.priors, self.prior_names, flip_x=self.flip,
                           rotations_deg=[ROTATE_STEP_DEG * k for k in range(1, 360 // ROTATE_STEP_DEG)]
                           if self.rotate else ())
        check_fits_memory(w, self.size, self.channels, 3, f"{self.size}³ volume")

    @property
    def residual_channel(self) -> int | None:
        """The input channel the model adds to its output (the prior dose) with :attr:`residual`, else None."""
        return self.channel_names.index("prior_dose") if self.residual else None

    # ------------------------------------------------------------------ presets
    @classmethod
    def for_phantoms(cls, **overrides: Any) -> "VolumeConfig":
        """Preset for :mod:`mddose.data.phantom` patients (target ``PTV``, thoracic OARs)."""
        from mddose.data.phantom import PHANTOM_OARS

        kw: dict[str, Any] = {"targets": ("PTV",), "oars": PHANTOM_OARS}
        kw.update(overrides)
        return cls(**kw)

    # ------------------------------------------------------------------ derived
    @property
    def air_value(self) -> float:
        """The CT channel's value for air (its padding value): clip(-1000 HU) / ct_divisor."""
        return float(np.float32(np.clip(AIR_HU, *self.ct_clip)) / np.float32(self.ct_divisor))


@dataclass
class VolumeArrays:
    """One patient on the model grid (S = ``cfg.size``).

    Attributes:
        cond: (C, S, S, S) float32 channels ``[CT, PTV, OAR_1..OAR_n]`` (:attr:`VolumeConfig.channel_names`).
        dose: (1, S, S, S) float32 dose / reference_dose, or None if the patient has no dose.
        mask: (1, S, S, S) float32 in {0, 1}: the possible-dose mask on the model grid.
        missing: ROIs of the config absent from the patient (their channels are zeros).
    """

    cond: np.ndarray
    dose: np.ndarray | None
    mask: np.ndarray
    missing: list[str]


# ---------------------------------------------------------------------------------------------- channels
def ct_channel(ct: np.ndarray, cfg: VolumeConfig) -> np.ndarray:
    """(…) float32: clip(ct, *ct_clip) / ct_divisor."""
    lo, hi = cfg.ct_clip
    return np.clip(ct, lo, hi).astype(np.float32) / np.float32(cfg.ct_divisor)


def target_channel(patient: Patient, cfg: VolumeConfig, missing: list[str] | None = None) -> np.ndarray:
    """(Z, Y, X) float32 PTV channel in reference-dose units (``cfg.target_channel`` "sum" or "max")."""
    out = np.zeros(patient.shape, dtype=np.float32)
    for t in cfg.targets:
        if t not in patient.masks:
            if missing is not None:
                missing.append(t)
            continue
        if t not in patient.prescriptions:
            raise MddoseError(f"patient {patient.id}: target {t!r} has a mask but no prescription")
        m, v = patient.masks[t], np.float32(patient.prescriptions[t] / cfg.reference_dose)
        out[m] = out[m] + v if cfg.target_channel == "sum" else np.maximum(out[m], v)
    return out


def native_volume(patient: Patient, cfg: VolumeConfig) -> VolumeArrays:
    """One patient's model channels on its own grid (no geometry applied: what :func:`patient_to_volume` resamples).

    Returns:
        :class:`VolumeArrays`: cond (C, Z, Y, X), dose (1, Z, Y, X) or None, mask (1, Z, Y, X), float32.
    """
    patient, _ = drop_empty_rois(patient, cfg.targets)      # an empty ROI file is an absent ROI
    missing: list[str] = []
    cond = np.empty((cfg.channels, *patient.shape), dtype=np.float32)
    cond[0] = ct_channel(patient.ct, cfg)
    cond[1] = target_channel(patient, cfg, missing)
    for i, name in enumerate(cfg.oars):
        cond[2 + i] = patient.masks[name] if name in patient.masks else 0.0
    missing += [name for name in cfg.oars if name not in patient.masks]
    if cfg.priors is not None:
        from mddose.data.inputs.prior_channels import patient_priors

        cond[len(cfg.base_channel_names):] = patient_priors(patient, cfg.priors, cfg.targets, cfg.reference_dose)
    mask = patient.dose_mask().astype(np.float32)[None]
    dose = None
    if patient.dose is not None:
        dose = (patient.dose / np.float32(cfg.reference_dose)).astype(np.float32)[None]
    return VolumeArrays(cond=cond, dose=dose, mask=mask, missing=list(dict.fromkeys(missing)))


def patient_to_volume(patient: Patient, cfg: VolumeConfig) -> VolumeArrays:
    """One patient as model input/target on the S³ grid (see the module docstring).

    Returns:
        :class:`VolumeArrays`: cond (C, S, S, S), dose (1, S, S, S) or None, mask (1, S, S, S), float32.
    """
    grid = (cfg.size,) * 3
    if patient.shape != grid:
        check_spacing(patient, cfg.size)
    arr = native_volume(patient, cfg)
    cond, dose, mask = arr.cond, arr.dose, arr.mask
    if patient.shape != grid:
        cond = to_grid(cond, grid)
        np.clip(cond[1], 0.0, None, out=cond[1])
        oars = slice(2, 2 + len(cfg.oars))  # masks only: other channels may follow the OARs
        np.clip(cond[oars], 0.0, 1.0, out=cond[oars])
        mask = (to_grid(mask, grid) >= 0.5).astype(np.float32)
        dose = None if dose is None else np.clip(to_grid(dose, grid), 0.0, None)
    return VolumeArrays(cond=np.ascontiguousarray(cond), dose=dose, mask=np.ascontiguousarray(mask),
                        missing=arr.missing)


def volume_to_patient(pred, patient: Patient, cfg: VolumeConfig) -> np.ndarray:
    """Put a predicted volume back on the patient's grid.

    Args:
        pred: (1, S, S, S) or (S, S, S) (numpy or torch) in reference-dose units.
        patient: the patient (grid shape, spacing, possible-dose mask).
        cfg: the volume config the input was built with.

    Returns:
        (Z, Y, X) float32 Gy: resampled back, × reference_dose, clipped at 0, zero outside the possible-dose mask.
    """
    s = cfg.size
    t = pred.detach().to("cpu", torch.float32) if isinstance(pred, torch.Tensor) \
        else torch.from_numpy(np.asarray(pred, dtype=np.float32))
    given = tuple(t.shape)
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if tuple(t.shape) != (s, s, s):
        raise MddoseError(f"patient {patient.id}: prediction must have shape (1, {s}, {s}, {s}) or "
                          f"({s}, {s}, {s}), got {given}")
    if patient.shape != (s, s, s):
        check_spacing(patient, s)
        t = resize_volume(t[None], patient.shape)[0]
    out = np.array(t.numpy(), dtype=np.float32, copy=True)
    out *= np.float32(cfg.reference_dose)
    np.clip(out, 0.0, None, out=out)
    out[~patient.dose_mask()] = 0.0
    return out


# ---------------------------------------------------------------------------------------------- augmentation
def _fill(t: torch.Tensor, pad: torch.Tensor | float) -> torch.Tensor:
    """A (C, Z, Y, X) tensor like ``t`` filled with the per-channel ``pad`` (C,) or a scalar."""
    if isinstance(pad, torch.Tensor):
        return pad.to(t.device, t.dtype).view(-1, 1, 1, 1).expand_as(t).clone()
    return torch.full_like(t, float(pad))


def rotation_indices(ny: int, nx: int, degrees: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest-neighbour source indices of an axial rotation by ``degrees`` about the grid centre.

    Returns:
        (iy, ix, valid): (Y, X) int64 source row/column of each output voxel (clamped) and (Y, X) bool,
        False where the source falls off the grid (to be padded).
    """
    th = math.radians(degrees)
    c, s = math.cos(th), math.sin(th)
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(ny) - cy, np.arange(nx) - cx, indexing="ij")
    sy = np.floor(c * yy - s * xx + cy + 0.5).astype(np.int64)  # inverse map: R(-θ)(dst - c) + c
    sx = np.floor(s * yy + c * xx + cx + 0.5).astype(np.int64)
    valid = (sy >= 0) & (sy < ny) & (sx >= 0) & (sx < nx)
    return (torch.from_numpy(np.clip(sy, 0, ny - 1)), torch.from_numpy(np.clip(sx, 0, nx - 1)),
            torch.from_numpy(valid))


def rotate_axial(t: torch.Tensor, degrees: float, pad: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Rotate (C, Z, Y, X) in the (y, x) plane (nearest); voxels from off the grid get ``pad`` (C,) or scalar."""
    iy, ix, valid = rotation_indices(t.shape[-2], t.shape[-1], degrees)
    out = t[:, :, iy.to(t.device), ix.to(t.device)]
    return torch.where(valid.to(t.device), out, _fill(t, pad))


def shift_range(mask: torch.Tensor, limit: int) -> list[tuple[int, int]]:
    """Per axis (z, y, x), the (low, high) integer shift within ±limit keeping ``mask`` (1, Z, Y, X) on the grid."""
    m, out = mask[0] > 0.5, []
    for axis, n in enumerate(m.shape):
        lim = min(int(limit), n - 1)
        idx = torch.nonzero(m.any(dim=tuple(a for a in range(3) if a != axis))).flatten()
        out.append((max(-lim, -int(idx[0])), min(lim, n - 1 - int(idx[-1]))) if len(idx) else (-lim, lim))
    return out


def shift_volume(t: torch.Tensor, shifts: Sequence[int], pad: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Translate (C, Z, Y, X) by integer ``shifts`` (dz, dy, dx) voxels; vacated voxels get ``pad``."""
    out = _fill(t, pad)
    dst, src = [slice(None)], [slice(None)]
    for d, n in zip(shifts, t.shape[1:]):
        d = int(d)
        if abs(d) >= n:
            return out
        dst.append(slice(max(d, 0), n + min(d, 0)))
        src.append(slice(max(-d, 0), n - max(d, 0)))
    out[tuple(dst)] = t[tuple(src)]
    return out


def augment_volume(cond: torch.Tensor, dose: torch.Tensor, mask: torch.Tensor, cfg: VolumeConfig,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """C3D's random flips, axial rotation and translation, applied jointly (deterministic given ``generator``).

    Args:
        cond: (C, S, S, S) float tensor; dose: (1, S, S, S); mask: (1, S, S, S) possible-dose mask in {0, 1}.

    Returns:
        (cond, dose, mask) with the same shapes; see the module docstring for the transforms and padding.
    """
    def u() -> float:
        return float(torch.rand((), generator=generator))

    pad = torch.tensor(cfg.pad_values)  # (C,): air for CT, far for signed distances, 0 for the rest
    if cfg.flip and u() < FLIP_P:
        if u() < 0.5:
            cond, dose, mask = cond.flip(1), dose.flip(1), mask.flip(1)
        if u() < 0.5:
            cond, dose, mask = cond.flip(3), dose.flip(3), mask.flip(3)
            perm = cfg.mirror_permutation
            if list(perm) != list(range(cond.shape[0])):
                cond = cond[torch.as_tensor(perm, device=cond.device)]
    if cfg.rotate and u() < ROTATE_P:
        k = int(torch.randint(0, 360 // ROTATE_STEP_DEG, (), generator=generator))
        if k:
            deg = float(k * ROTATE_STEP_DEG)
            cond, dose, mask = rotate_axial(cond, deg, pad), rotate_axial(dose, deg), rotate_axial(mask, deg)
            perm = cfg.prior_permutation(rotate_deg=deg)         # per-field beam priors follow their fields
            if list(perm) != list(range(cond.shape[0])):
                cond = cond[torch.as_tensor(perm, device=cond.device)]
    if cfg.translate > 0:
        shifts = [int(torch.randint(lo, hi + 1, (), generator=generator))
                  for lo, hi in shift_range(mask, cfg.translate)]
        if any(shifts):
            cond, dose, mask = shift_volume(cond, shifts, pad), shift_volume(dose, shifts), shift_volume(mask, shifts)
    return cond.contiguous(), dose.contiguous(), mask.contiguous()


def tta_predict(fn: Callable[[torch.Tensor], torch.Tensor], cond: torch.Tensor, cfg: VolumeConfig) -> torch.Tensor:
    """Test-time augmentation: mean of ``fn`` over the flips none, z, x, z+x, each output un-flipped.

    Args:
        fn: (B, C, S, S, S) → (B, 1, S, S, S), e.g. a model (call under ``torch.no_grad()``).
        cond: (B, C, S, S, S) input; an x flip also swaps the L/R OAR channels (``cfg.mirror_permutation``).

    Returns:
        (B, 1, S, S, S); exactly ``fn(cond)`` when ``fn`` commutes with the flips.
    """
    if not isinstance(cond, torch.Tensor) or cond.ndim != 5 or cond.shape[1] != cfg.channels:
        shape = tuple(getattr(cond, "shape", ()))
        raise MddoseError(f"tta_predict: cond must be a (B, {cfg.channels}, S, S, S) tensor, got shape {shape}")
    perm = torch.as_tensor(cfg.mirror_permutation, device=cond.device)
    outs = []
    for dims in TTA_FLIPS:
        x = cond.flip(dims) if dims else cond
        if 4 in dims:
            x = x.index_select(1, perm)
        y = fn(x)
        outs.append(y.flip(dims) if dims else y)
    return ((outs[0] + outs[1]) + (outs[2] + outs[3])) * 0.25  # pairwise: exact when all four are equal


# ---------------------------------------------------------------------------------------------- dataset
def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of item ``index`` in ``epoch`` (as :class:`mddose.kinds.diffusion2d.AugmentedView`)."""
    return (int(seed) * 1_000_003 + int(epoch)) * 10_000_019 + int(index)


def add_patients(items: Sequence, add: Callable[[Any], None], what: str, desc: str, progress: bool,
                 any_added: Callable[[], bool]) -> list[tuple[str, str]]:
    """Call ``add`` on every item of a dataset being built: a :class:`Patient` that fails raises, a directory that
    fails is logged and returned as ``(path, message)``; nothing added at all (``any_added()`` false) → one-line
    MddoseError ``"{what}: no usable patient (...)"``."""
    bad: list[tuple[str, str]] = []
    it: Any = items
    if progress:
        from tqdm import tqdm
        it = tqdm(items, desc=desc, unit="pt")
    for item in it:
        try:
            add(item)
        except Exception as exc:  # noqa: BLE001 - a directory that fails is reported, the rest go on
            if isinstance(item, Patient):
                raise
            msg = describe_error(exc)
            logger.warning("skipping patient %s: %s", item, msg)
            bad.append((str(item), msg))
    if not any_added():
        raise MddoseError(f"{what}: no usable patient" + (f" ({bad[0][0]}: {bad[0][1]})" if bad else ""))
    return bad


class VolumeDataset(Dataset):
    """Whole volumes of some patients on the model grid, for training 3D regression models.

    Args:
        patients: :class:`Patient` objects and/or patient directories (read with
            :func:`mddose.data.io.load_patient`, through its on-disk patient cache, one at a time).
        cfg: the volume config.
        augment: apply :func:`augment_volume` with a generator seeded from ``(seed, epoch, index)``.
        seed: augmentation seed.
        progress: show a tqdm bar while building.

    Attributes ``cond`` (N, C, S, S, S) float16, ``dose`` (N, 1, S, S, S) float16, ``mask``
    (N, 1, S, S, S) bool (60 OpenKBP patients at 128³ ≈ 2.6 GB), ``patient_ids`` and ``missing``
    (patient id → absent ROIs). Items are dicts ``{"cond": (C, S, S, S) float32, "dose": (1, S, S, S)
    float32, "mask": (1, S, S, S) float32, "index": i}``. A :class:`Patient` without dose raises
    MddoseError; a directory that can't be read or has no dose (whatever the exception) is skipped and
    listed in :attr:`bad` as ``(path, message)`` (logged as a warning); none usable → MddoseError.
    """

    def __init__(self, patients: Sequence[Patient | str | os.PathLike], cfg: VolumeConfig, *,
                 augment: bool = False, seed: int = 0, progress: bool = False):
        items = list(patients)
        no_dose = [p.id for p in items if isinstance(p, Patient) and p.dose is None]
        if no_dose:
            raise MddoseError(f"volume dataset: patient(s) {', '.join(no_dose)} have no dose to train on")
        self.cfg, self.augment, self.seed, self.epoch = cfg, bool(augment), int(seed), 0
        n, grid = len(items), (cfg.size,) * 3
        self.cond = np.empty((n, cfg.channels, *grid), dtype=np.float16)
        self.dose = np.empty((n, 1, *grid), dtype=np.float16)
        self.mask = np.empty((n, 1, *grid), dtype=bool)
        self.patient_ids: list[str] = []
        self.missing: dict[str, list[str]] = {}
        self.bad = add_patients(items, lambda item: self._add(len(self.patient_ids), item), "volume dataset",
                                "building volumes", progress, lambda: bool(self.patient_ids))
        k = len(self.patient_ids)
        self.cond, self.dose, self.mask = self.cond[:k], self.dose[:k], self.mask[:k]

    def _add(self, i: int, item: Patient | str | os.PathLike) -> None:
        if isinstance(item, Patient):
            patient = item
        else:
            patient = load_patient(item)
            if patient.dose is None:
                raise MddoseError(f"volume dataset: patient {patient.id} has no dose to train on", item)
        arr = patient_to_volume(patient, self.cfg)
        self.cond[i], self.dose[i], self.mask[i] = arr.cond, arr.dose, arr.mask > 0.5
        self.patient_ids.append(patient.id)
        self.missing[patient.id] = arr.missing

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of epoch ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.cond.shape[0])

    def __getitem__(self, i: int) -> dict:
        cond = torch.from_numpy(self.cond[i].astype(np.float32))
        dose = torch.from_numpy(self.dose[i].astype(np.float32))
        mask = torch.from_numpy(self.mask[i].astype(np.float32))
        if self.augment:
            g = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, i))
            cond, dose, mask = augment_volume(cond, dose, mask, self.cfg, g)
        return {"cond": cond, "dose": dose, "mask": mask, "index": int(i)}
