"""Training data from a :class:`TrainConfig`: slice datasets (2D models) or volume datasets (3D models) of
patients or of in-memory phantoms."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mddose.errors import MddoseError
from mddose.train.config import TrainConfig


class AugmentedView(Dataset):
    """Wraps an un-augmented slice dataset; item ``i`` of epoch ``e`` is augmented with a generator
    seeded by ``(seed, e, i)`` — independent of workers, ranks and mid-epoch resume (exact resume)."""

    def __init__(self, base: Dataset, slice_cfg, seed: int):
        self.base, self.cfg, self.seed, self.epoch = base, slice_cfg, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        from mddose.data.slices import augment_pair
        item = dict(self.base[i])
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(i))
        item["cond"], item["dose"] = augment_pair(item["cond"], item["dose"], self.cfg, generator=g)
        return item


@dataclass
class TrainData:
    """train: Dataset of {"cond", "dose", ...}; val_patients: Patients for the validation score;
    data_config: the SliceConfig (2D) or VolumeConfig (3D); channels: C; grid: slice size or volume edge."""

    train: Dataset
    val_patients: list
    data_config: Any
    channels: int
    grid: int


def _list_patients(spec: str) -> list[Path]:
    """A directory of patient dirs, one patient dir, or a text file of paths (relative to the file)."""
    p = Path(spec)
    if p.is_file():
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        out = [(p.parent / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines]
        missing = [str(x) for x in out if not x.exists()]
        if missing:
            raise MddoseError(f"listed patient path(s) not found: {', '.join(missing[:3])}", p)
        return out
    if not p.is_dir():
        raise MddoseError("training data not found (expected a patient directory, a directory of "
                          "patient directories or a list file)", p)
    subs = sorted((d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: (len(d.name), d.name))
    from mddose.data.io import detect_format
    try:
        detect_format(p)
        return [p]
    except MddoseError:
        if not subs:
            raise MddoseError("no patient directories found", p) from None
        return subs


def _slice_config(cfg: TrainConfig, phantoms: bool):
    from mddose.data.slices import SliceConfig
    d = dict(cfg.slices)
    known = set(SliceConfig.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise MddoseError(f"train config 'slices': unknown key(s) {', '.join(unknown)}")
    if phantoms:
        return SliceConfig.for_phantoms(**d)
    return SliceConfig.from_dict(d)


def _patients(cfg: TrainConfig):
    """(training sources, validation patients, phantoms?) of a config: patient paths, or generated phantoms."""
    ph = cfg.data.phantoms
    if cfg.data.train is None and not ph:
        raise MddoseError("train config: data needs 'train' (patients) or 'phantoms'")
    if cfg.data.train is None:
        from mddose.data.phantom import make_phantom
        unknown = sorted(set(ph) - {"n", "seed", "size", "val"})
        if unknown:
            raise MddoseError(f"train config data.phantoms: unknown key(s) {', '.join(unknown)}")
        n, seed, size, nval = int(ph.get("n", 8)), int(ph.get("seed", 0)), int(ph.get("size", 64)), int(ph.get("val", 2))
        return [make_phantom(seed + i, size) for i in range(n)], [make_phantom(seed + n + j, size)
                                                                 for j in range(nval)], True
    val_p: list = []
    if cfg.data.val:
        from mddose.data.io import load_patient
        val_p = [load_patient(p) for p in _list_patients(cfg.data.val)]
    return _list_patients(cfg.data.train), val_p, False


def build_slice_data(cfg: TrainConfig, *, progress: bool = False) -> TrainData:
    """Slices of the training patients (2D models); validation patients loaded whole."""
    from mddose.data.slices import SliceDataset

    if cfg.volume:
        raise MddoseError(f"train config: 'volume' is for 3D models; {cfg.model} is a 2D model (use 'slices')")
    train_src, val_p, phantoms = _patients(cfg)
    scfg = _slice_config(cfg, phantoms=phantoms)
    base = SliceDataset(train_src, scfg, augment=False, progress=progress)
    if len(base) == 0:
        raise MddoseError(f"no training slices in {cfg.data.train or 'phantoms'}")
    aug = scfg.flip_x or scfg.flip_y or scfg.rot90
    ds = AugmentedView(base, scfg, cfg.seed) if aug else base
    return TrainData(train=ds, val_patients=val_p, data_config=scfg, channels=scfg.channels, grid=scfg.size)


def volume_config_for(cfg: TrainConfig, grid_size: int | None, phantoms: bool):
    """The :class:`~mddose.data.volume.VolumeConfig` of a run: ``cfg.volume`` over the defaults (OpenKBP's
    ROIs, or the phantoms'), with ``size`` = the model's ``grid_size`` unless ``cfg.volume`` sets it."""
    from mddose.data.volume import VolumeConfig

    d = dict(cfg.volume)
    known = set(VolumeConfig.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise MddoseError(f"train config 'volume': unknown key(s) {', '.join(unknown)}")
    if grid_size and "size" not in d:
        d["size"] = int(grid_size)
    return VolumeConfig.for_phantoms(**d) if phantoms else VolumeConfig.from_dict(d)


def build_volume_data(cfg: TrainConfig, *, grid_size: int | None = None, progress: bool = False) -> TrainData:
    """Whole volumes of the training patients (3D models), resampled to the model's grid, augmented as C3D."""
    from mddose.data.volume import VolumeDataset

    if cfg.slices:
        raise MddoseError(f"train config: 'slices' is for 2D models; {cfg.model} is a 3D model (use 'volume')")
    train_src, val_p, phantoms = _patients(cfg)
    vcfg = volume_config_for(cfg, grid_size, phantoms)
    ds = VolumeDataset(train_src, vcfg, augment=True, seed=cfg.seed, progress=progress)
    if len(ds) == 0:
        raise MddoseError(f"no training volumes in {cfg.data.train or 'phantoms'}")
    return TrainData(train=ds, val_patients=val_p, data_config=vcfg, channels=vcfg.channels, grid=vcfg.size)
