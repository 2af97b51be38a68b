"""A torch ``Dataset`` of 2D slices: every slice of some patients, built through the slice cache.

The slices are those of :func:`mddose.data.inputs.slices.patient_to_slices`; they are assembled (and
cached on disk) by :func:`mddose.data.inputs.slice_cache.collect_slices`.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mddose.data.inputs.slice_cache import collect_slices
from mddose.data.inputs.slices import SliceConfig, augment_item
from mddose.data.patient import Patient
from mddose.errors import MddoseError


class SliceDataset(Dataset):
    """All slices of some patients, in contiguous ``(N, C, H, W)`` / ``(N, 1, H, W)`` arrays.

    Args:
        patients: :class:`Patient` objects and/or patient directories (loaded with
            :func:`mddose.data.io.load_patient` only when their slices are not cached yet).
        cfg: the slice config.
        augment: apply the random flips/rotations enabled in ``cfg`` (jointly to cond, dose and mask).
        cache: read/write per-patient slice arrays under ``$MDDOSE_CACHE_DIR/slices``.
        dtype: storage dtype, ``"float16"`` (half the memory) or ``"float32"``.
        progress: show a tqdm bar.

    Attributes ``cond`` (N, C, H, W) and ``dose`` (N, 1, H, W) are contiguous arrays of ``dtype``, ``mask``
    (N, 1, H, W) uint8; with the cache they are copy-on-write memory maps of the dataset's cache entry
    (nothing copied on a warm build; pages are shared between DataLoader workers), ``patient_index``/``z``
    (N,) int64, ``boxes`` the crop box (y0, y1, x0, x1) of each patient.
    Items are dicts ``{"cond": (C, H, W) float32, "dose": (1, H, W) float32, "mask": (1, H, W) float32 0/1,
    "patient": int, "z": int}``; ``mask`` is the slice's possible-dose mask (else the body, else ones; see
    :mod:`mddose.data.inputs.slices`), on the same grid as the dose, e.g. for weighting a loss.
    Patients that cannot be read are listed in :attr:`bad` as ``(item, message)`` and skipped.
    """

    def __init__(self, patients: Sequence[Patient | str | os.PathLike], cfg: SliceConfig,
                 augment: bool = False, *, cache: bool = True, dtype: str = "float16",
                 progress: bool = False):
        if dtype not in ("float16", "float32"):
            raise MddoseError(f"dataset dtype must be 'float16' or 'float32', got {dtype!r}")
        self.cfg, self.augment = cfg, bool(augment)
        data = collect_slices(patients, cfg, cache=cache, dtype=dtype, progress=progress)
        self.cond, self.dose, self.mask, self.boxes = data.cond, data.dose, data.mask, data.boxes
        self.patient_index, self.z = data.patient_index, data.z
        self.patient_ids, self.missing, self.bad = data.patient_ids, data.missing, data.bad
        self._perm = np.asarray(cfg.mirror_permutation)

    def __len__(self) -> int:
        return int(self.cond.shape[0])

    def __getitem__(self, i: int) -> dict:
        item = {"cond": torch.from_numpy(np.asarray(self.cond[i], dtype=np.float32)),
                "dose": torch.from_numpy(np.asarray(self.dose[i], dtype=np.float32)),
                "mask": torch.from_numpy(np.asarray(self.mask[i], dtype=np.float32)),
                "patient": int(self.patient_index[i]), "z": int(self.z[i])}
        return augment_item(item, self.cfg, self._perm) if self.augment else item
