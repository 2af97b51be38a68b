"""The 3D models' full-resolution geometry (``VolumeConfig.grid == "crop"``): the possible-dose box, no resampling.

* **Box** (:func:`crop_box`): the bounding box of ``patient.dose_mask()`` over all three axes, widened by
  ``cfg.crop_margin`` voxels on each side and clipped to the patient's grid (an empty mask: the whole grid).
  The model's channels (:func:`~mddose.data.inputs.volume.native_volume`, on the patient's own grid) are cut
  to it at the original voxel size (:func:`patient_to_crop`).
* **Training** (:class:`CropPatchDataset`): every item is one ``size``³ patch (``size`` = ``cfg.size``, the
  model's ``grid_size``) of one patient's crop: a voxel of the possible-dose mask is drawn uniformly, then
  the patch's position uniformly among those that contain it (so every patch holds dose-region voxels);
  where the crop is smaller than a patch the patch reaches outside it and gets the per-channel padding
  (:func:`channel_pad`: air for the CT channel, far for signed-distance priors, 0 for the others; dose and
  mask 0). Then C3D's flips and
  axial rotation (:func:`~mddose.data.inputs.volume.augment_volume` without its translation: the patch
  position is already random).
* **Prediction** (:func:`predict_crop`, optionally the mean of four flips), then put back on the patient's grid
  (:func:`crop_to_patient`: zero outside the box and outside the possible-dose mask, × reference_dose, clip ≥ 0).
  ``cfg.crop_predict``: ``"windows"`` (default): the mean over ``size``³ windows overlapping by half
  (:func:`predict_windows`), what the model saw in training; ``"whole"``: the whole crop in one pass (fully
  convolutional), padded at its far end up to a multiple of the model's ``2^(levels-1)`` per axis. Both fit in
  memory: on the 2-core CPU (contended) a 128 × 80 × 128 crop (larger than any of the shared validation
  patients' crops with margin 8, 50–120 × 67–80 × 54–120) takes 2.5 s and 1.15 GB peak RSS in one pass with
  HD-UNet ``small`` (``paper``: 6.2 s, 1.7 GB), a 64³ window 0.5 s. But HD-UNet's instance norms normalise over
  what they see: a model trained on 64³ patches and run on the whole crop sees other statistics, and scored
  worse on every validation patient measured (HD-UNet ``small`` after 40 steps, no TTA: 10.8 / 8.9 / 10.0 Gy
  by windows against 17.7 / 10.5 / 14.9 Gy whole, pt_201–203), hence windows by default (≈ 4× the compute).

The round trip crop → :func:`crop_to_patient` is exact on the box (up to the float32 ``÷ × reference_dose``).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mddose.data.inputs.volume import (VolumeConfig, add_patients, augment_volume, item_seed, native_volume,
                                      tta_predict)
from mddose.data.io import load_patient
from mddose.data.patient import Patient
from mddose.errors import MddoseError

Box = tuple[slice, slice, slice]


@dataclass
class CropArrays:
    """One patient cut to its box (original voxel size).

    Attributes:
        cond: (C, z, y, x) float32 channels (as :func:`~mddose.data.inputs.volume.native_volume`).
        dose: (1, z, y, x) float32 dose / reference_dose, or None. mask: (1, z, y, x) float32 in {0, 1}.
        box: the (z, y, x) slices of the patient's grid. missing: ROIs of the config absent from the patient.
    """

    cond: np.ndarray
    dose: np.ndarray | None
    mask: np.ndarray
    box: Box
    missing: list[str]


def crop_box(mask: np.ndarray, margin: int) -> Box:
    """The (z, y, x) slices of the bounding box of ``mask`` (Z, Y, X) bool widened by ``margin``, on the grid."""
    out = []
    for axis, n in enumerate(mask.shape):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lo, hi = (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, n)
        out.append(slice(max(lo - margin, 0), min(hi + margin, n)))
    return tuple(out)  # type: ignore[return-value]


def channel_pad(cfg: VolumeConfig, channels: int) -> np.ndarray:
    """(C,) float32 padding value of each input channel (:attr:`VolumeConfig.pad_values`: air for CT, 1 — far —
    for a signed-distance prior, 0 for the others)."""
    pad = np.asarray(cfg.pad_values, dtype=np.float32)
    if pad.shape != (channels,):
        raise MddoseError(f"volume config has {pad.shape[0]} channels, the volume {channels}")
    return pad


def patient_to_crop(patient: Patient, cfg: VolumeConfig) -> CropArrays:
    """The patient's channels, dose and possible-dose mask on its box (see the module docstring)."""
    arr = native_volume(patient, cfg)
    box = crop_box(patient.dose_mask(), cfg.crop_margin)
    cut = lambda a: None if a is None else np.ascontiguousarray(a[(slice(None), *box)])  # noqa: E731
    return CropArrays(cond=cut(arr.cond), dose=cut(arr.dose), mask=cut(arr.mask), box=box, missing=arr.missing)


def crop_to_patient(pred, patient: Patient, cfg: VolumeConfig, box: Box) -> np.ndarray:
    """Put a prediction on the box back on the patient's grid.

    Args:
        pred: (1, z, y, x) or (z, y, x) (numpy or torch) in reference-dose units, the box's shape.

    Returns:
        (Z, Y, X) float32 Gy: × reference_dose, clipped at 0, zero outside the box and the possible-dose mask.
    """
    a = pred.detach().to("cpu", torch.float32).numpy() if isinstance(pred, torch.Tensor) \
        else np.asarray(pred, dtype=np.float32)
    want = tuple(s.stop - s.start for s in box)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.shape != want:
        raise MddoseError(f"patient {patient.id}: prediction must have the crop's shape {want}, got {a.shape}")
    out = np.zeros(patient.shape, dtype=np.float32)
    out[box] = a * np.float32(cfg.reference_dose)
    np.clip(out, 0.0, None, out=out)
    out[~patient.dose_mask()] = 0.0
    return out


def padded_shape(shape: Sequence[int], multiple: int) -> tuple[int, ...]:
    """Each side rounded up to a multiple of ``multiple``."""
    return tuple(-(-int(n) // multiple) * multiple for n in shape)


def extract_patch(a: np.ndarray, start: Sequence[int], size: int, pad: np.ndarray | float) -> np.ndarray:
    """The ``size``³ window of ``a`` (C, Z, Y, X) starting at ``start`` (z, y, x; may be negative or reach past
    the end); voxels outside ``a`` get ``pad`` ((C,) or a scalar). Returns (C, size, size, size), ``a``'s dtype."""
    out = np.empty((a.shape[0], size, size, size), dtype=a.dtype)
    out[...] = np.asarray(pad, dtype=a.dtype).reshape(-1, 1, 1, 1)
    src, dst = [slice(None)], [slice(None)]
    for s0, n in zip(start, a.shape[1:]):
        lo, hi = max(int(s0), 0), min(int(s0) + size, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(s0), hi - int(s0)))
    out[tuple(dst)] = a[tuple(src)]
    return out


def patch_start(mask: np.ndarray, size: int, gen: torch.Generator) -> tuple[int, int, int]:
    """A random patch origin (z, y, x) whose ``size``³ window contains a voxel of ``mask`` (Z, Y, X) drawn
    uniformly (any voxel when the mask is empty); along an axis shorter than ``size`` the window covers it all."""
    flat = np.flatnonzero(mask)
    k = int(torch.randint(0, len(flat) if len(flat) else mask.size, (), generator=gen))
    centre = np.unravel_index(int(flat[k]) if len(flat) else k, mask.shape)
    out = []
    for c, n in zip(centre, mask.shape):
        lo, hi = (max(0, c - size + 1), min(c, n - size)) if n >= size else (n - size, 0)
        out.append(int(torch.randint(lo, hi + 1, (), generator=gen)))
    return tuple(out)  # type: ignore[return-value]


def window_starts(n: int, size: int, stride: int) -> list[int]:
    """Origins of ``size``-long windows along an axis of ``n`` voxels: every ``stride`` from 0, the last flush with
    the end; one window centred on the axis (negative origin: it reaches past both ends) when ``n`` ≤ ``size``."""
    if n <= size:
        return [-((size - n) // 2)]
    out = list(range(0, n - size + 1, stride))
    return out if out[-1] == n - size else out + [n - size]


def predict_windows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int,
                    pad: np.ndarray) -> torch.Tensor:
    """Mean of ``fn`` over overlapping ``size``³ windows (stride ``size // 2``, :func:`window_starts`) of ``x``.

    Args:
        fn: (1, C, S, S, S) → (1, 1, S, S, S). x: (1, C, z, y, x). pad: (C,) value of the voxels outside ``x``.

    Returns:
        (1, 1, z, y, x): each voxel the mean over the windows that hold it.
    """
    shape = tuple(x.shape[2:])
    starts = [window_starts(n, size, max(size // 2, 1)) for n in shape]
    before = [-min(st[0], 0) for st in starts]
    big_shape = [max(n, size) for n in shape]
    big = torch.as_tensor(pad, dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1).expand(
        1, x.shape[1], *big_shape).clone()
    big[(slice(None), slice(None), *(slice(b, b + n) for b, n in zip(before, shape)))] = x
    acc = torch.zeros((1, 1, *shape), dtype=torch.float32, device=x.device)
    count = torch.zeros(shape, dtype=torch.float32, device=x.device)
    for origin in itertools.product(*starts):
        y = fn(big[(slice(None), slice(None), *(slice(o + b, o + b + size) for o, b in zip(origin, before)))])
        src = tuple(slice(max(o, 0), min(o + size, n)) for o, n in zip(origin, shape))
        dst = tuple(slice(s_.start - o, s_.stop - o) for s_, o in zip(src, origin))
        acc[(slice(None), slice(None), *src)] += y[(slice(None), slice(None), *dst)].float()
        count[src] += 1.0
    return acc / count


def predict_crop(fn: Callable[[torch.Tensor], torch.Tensor], patient: Patient, cfg: VolumeConfig, multiple: int, *,
                 tta: bool = False, device: torch.device | str = "cpu") -> np.ndarray:
    """The dose of one patient from a fully convolutional model run on its crop (``cfg.crop_predict``: the whole
    crop in one pass, or the mean over overlapping ``size``³ windows, the patches' size).

    Args:
        fn: (1, C, z', y', x') → (1, 1, z', y', x'), sides multiples of ``multiple`` (call under no_grad).
        multiple: the model's input side multiple, 2^(levels-1).

    Returns:
        (Z, Y, X) float32 Gy (:func:`crop_to_patient`).
    """
    arr = patient_to_crop(patient, cfg)
    shape = arr.cond.shape[1:]
    pad = channel_pad(cfg, arr.cond.shape[0])
    if cfg.crop_predict == "windows":
        x = torch.from_numpy(arr.cond)[None].to(device)
        run = lambda t: predict_windows(fn, t, cfg.size, pad)  # noqa: E731
        out = tta_predict(run, x, cfg) if tta else run(x)
        return crop_to_patient(out[0], patient, cfg, arr.box)
    cond = arr.cond
    full = padded_shape(shape, multiple)
    if full != shape:
        cond = np.empty((cond.shape[0], *full), dtype=np.float32)
        cond[...] = pad.reshape(-1, 1, 1, 1)
        cond[(slice(None), *(slice(0, n) for n in shape))] = arr.cond
    x = torch.from_numpy(np.ascontiguousarray(cond))[None].to(device)
    out = tta_predict(fn, x, cfg) if tta else fn(x)
    out = out[0, :, :shape[0], :shape[1], :shape[2]]
    return crop_to_patient(out, patient, cfg, arr.box)


class CropPatchDataset(Dataset):
    """The crops of some patients, held in memory, served as random ``cfg.size``³ training patches.

    Args:
        patients: :class:`Patient` objects and/or patient directories (read with :func:`load_patient`).
        cfg: the volume config (``grid="crop"``). augment: flips and rotation after the patch is cut.
        seed: patch / augmentation seed (items are deterministic given ``(seed, epoch, index)``).

    Attributes ``cond`` (list of (C, z, y, x) float16), ``dose`` (list of (1, z, y, x) float16), ``mask``
    (list of (z, y, x) bool), ``boxes``, ``patient_ids``, ``missing`` and ``bad``, as
    :class:`~mddose.data.inputs.volume.VolumeDataset` (a patient without dose: MddoseError; a directory that
    fails: skipped and listed in ``bad``). Items: ``{"cond": (C, S, S, S) float32, "dose": (1, S, S, S),
    "mask": (1, S, S, S) float32, "index": i}`` with S = ``cfg.size``.
    """

    def __init__(self, patients: Sequence[Patient | str | os.PathLike], cfg: VolumeConfig, *,
                 augment: bool = False, seed: int = 0, progress: bool = False):
        items = list(patients)
        no_dose = [p.id for p in items if isinstance(p, Patient) and p.dose is None]
        if no_dose:
            raise MddoseError(f"crop dataset: patient(s) {', '.join(no_dose)} have no dose to train on")
        self.cfg, self.augment, self.seed, self.epoch = cfg, bool(augment), int(seed), 0
        self.aug_cfg = replace(cfg, translate=0)
        self.pad = channel_pad(cfg, cfg.channels)
        self.cond: list[np.ndarray] = []
        self.dose: list[np.ndarray] = []
        self.mask: list[np.ndarray] = []
        self.boxes: list[Box] = []
        self.patient_ids: list[str] = []
        self.missing: dict[str, list[str]] = {}
        self.bad = add_patients(items, self._add, "crop dataset", "building crops", progress,
                                lambda: bool(self.patient_ids))

    def _add(self, item: Patient | str | os.PathLike) -> None:
        patient = item if isinstance(item, Patient) else load_patient(item)
        if patient.dose is None:
            raise MddoseError(f"crop dataset: patient {patient.id} has no dose to train on", item)
        arr = patient_to_crop(patient, self.cfg)
        self.cond.append(arr.cond.astype(np.float16))
        self.dose.append(arr.dose.astype(np.float16))
        self.mask.append(arr.mask[0] > 0.5)
        self.boxes.append(arr.box)
        self.patient_ids.append(patient.id)
        self.missing[patient.id] = arr.missing

    @property
    def nbytes(self) -> int:
        """Bytes held by the crops (cond + dose + mask)."""
        return sum(a.nbytes for a in (*self.cond, *self.dose, *self.mask))

    def set_epoch(self, epoch: int) -> None:
        """Select the patches and augmentation of epoch ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.cond)

    def __getitem__(self, i: int) -> dict:
        s = self.cfg.size
        g = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, i))
        start = patch_start(self.mask[i], s, g)
        cond = torch.from_numpy(extract_patch(self.cond[i], start, s, self.pad).astype(np.float32))
        dose = torch.from_numpy(extract_patch(self.dose[i], start, s, 0.0).astype(np.float32))
        mask = torch.from_numpy(extract_patch(self.mask[i][None], start, s, False).astype(np.float32))
        if self.augment:
            cond, dose, mask = augment_volume(cond, dose, mask, self.aug_cfg, g)
        return {"cond": cond, "dose": dose, "mask": mask, "index": int(i)}
