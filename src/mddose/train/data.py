"""Training data from a :class:`TrainConfig`: slice datasets (2D models) or volume datasets (3D models) of
patients or of in-memory phantoms.

The scan of the training and validation patients finishes the rest: a patient that fails to load or to
process — whatever the exception — is skipped, logged as a warning, and listed in :attr:`TrainData.skipped`
as ``(path, one-line message naming it)``; the run trains on the others (``mddose train`` then exits with
status 2 at the end). Only when no training patient is usable is it an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mddose.errors import MddoseError
from mddose.train.config import TrainConfig, phantoms_config
from mddose.utils.config import dataclass_from_dict
from mddose.utils.fs import describe_error
from mddose.utils.log import logger


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
        from mddose.data.inputs.slices import augment_item
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(i))
        return augment_item(dict(self.base[i]), self.cfg, generator=g)     # cond, dose and mask jointly


@dataclass
class TrainData:
    """train: Dataset of {"cond", "dose", ...}; val_patients: Patients for the validation score;
    data_config: the SliceConfig (2D) or VolumeConfig (3D); channels: C; grid: slice size or volume edge;
    skipped: ``(path, message)`` of every training or validation patient that could not be used."""

    train: Dataset
    val_patients: list
    data_config: Any
    channels: int
    grid: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _skip(item: Any, exc: BaseException) -> tuple[str, str]:
    """``(path, one-line message naming the path)`` of an unusable patient, logged as a warning."""
    name = str(getattr(item, "id", item))
    msg = describe_error(exc)
    if name not in msg:
        msg = f"{name}: {msg}"
    logger.warning("skipping patient: %s", msg)
    return name, msg


def list_patients(spec: str | tuple[str, ...] | list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(patient folders, skipped) of a patient folder, a folder of patient folders, a text file of paths
    (one per line, relative to the file; ``#`` comments), or a list of those (concatenated in order).
    A listed path that does not exist is skipped."""
    from mddose.data.io import patient_dirs

    if isinstance(spec, (list, tuple)):
        folders: list[Path] = []
        skipped: list[tuple[str, str]] = []
        for one in spec:
            f, s = list_patients(one)
            folders += f
            skipped += s
        return folders, skipped
    p = Path(spec)
    if p.is_file():
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MddoseError(f"cannot read the patient list ({describe_error(exc)})", p) from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        out = [(p.parent / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines]
        if not out:
            raise MddoseError("the patient list names no patients", p)
        good = [x for x in out if x.exists()]
        return good, [_skip(x, MddoseError(f"listed in {p} but not found", x)) for x in out if not x.exists()]
    if not p.exists():
        raise MddoseError("training data not found (expected a patient directory, a directory of "
                          "patient directories or a list file)", p)
    return patient_dirs(p), []


def _load_each(items: list, what: str) -> tuple[list, list[tuple[str, str]]]:
    """(loaded Patients, skipped) — every item loaded on its own; a failure skips that item only."""
    from mddose.data.io import load_patient

    loaded, skipped = [], []
    for item in items:
        try:
            patient = load_patient(item)
            if patient.dose is None:
                raise MddoseError(f"has no dose (needed for {what})", item)
            loaded.append(patient)
        except Exception as exc:  # noqa: BLE001 - any failure of one patient: report it and go on
            skipped.append(_skip(item, exc))
    return loaded, skipped


def _patients(cfg: TrainConfig):
    """(training sources, validation patients, phantoms?, skipped) of a config: patient paths, or phantoms."""
    ph = cfg.data.phantoms
    if cfg.data.train is None and not ph:
        raise MddoseError("train config: data needs 'train' (patients) or 'phantoms'")
    if cfg.data.train is None:
        from mddose.data.phantom import make_phantom
        pc = phantoms_config(ph)
        return [make_phantom(pc.seed + i, pc.size) for i in range(pc.n)], \
            [make_phantom(pc.seed + pc.n + j, pc.size) for j in range(pc.val)], True, []
    train_src, skipped = list_patients(cfg.data.train)
    val_p: list = []
    if cfg.data.val:
        val_items, val_skipped = list_patients(cfg.data.val)
        val_p, more = _load_each(val_items, "validation")
        skipped += val_skipped + more
    return train_src, val_p, False, skipped


def _input_config(cls, d: dict, section: str, phantoms: bool, **defaults: Any):
    """``cls`` (SliceConfig / VolumeConfig) from the ``section`` of the train config over the defaults (the
    phantoms' preset for phantoms); unknown keys and bad values → one-line MddoseError."""
    base = cls.for_phantoms().to_dict() if phantoms else {}
    return dataclass_from_dict(cls, {**base, **defaults, **d}, "train config", prefix=f"{section}.")


def build_slice_data(cfg: TrainConfig, *, progress: bool = False) -> TrainData:
    """Slices of the training patients (2D models); validation patients loaded whole."""
    from mddose.data.inputs.slice_dataset import SliceDataset
    from mddose.data.inputs.slices import SliceConfig

    if cfg.volume:
        raise MddoseError(f"train config: 'volume' is for 3D models; {cfg.model} is a 2D model (use 'slices')")
    train_src, val_p, phantoms, skipped = _patients(cfg)
    scfg = _input_config(SliceConfig, cfg.slices, "slices", phantoms)
    base = SliceDataset(train_src, scfg, augment=False, progress=progress)
    skipped += [(str(item), msg) for item, msg in getattr(base, "bad", [])]
    if len(base) == 0:
        raise MddoseError(f"no training slices in {cfg.data.train or 'phantoms'}")
    aug = scfg.flip_x or scfg.flip_y or scfg.rot90
    ds = AugmentedView(base, scfg, cfg.seed) if aug else base
    return TrainData(train=ds, val_patients=val_p, data_config=scfg, channels=scfg.channels, grid=scfg.size,
                     skipped=skipped)


def volume_config_for(cfg: TrainConfig, grid_size: int | None, phantoms: bool):
    """The :class:`~mddose.data.inputs.volume.VolumeConfig` of a run: ``cfg.volume`` over the defaults (OpenKBP's
    ROIs, or the phantoms'), with ``size`` = the model's ``grid_size`` unless ``cfg.volume`` sets it."""
    from mddose.data.inputs.volume import VolumeConfig

    defaults = {"size": int(grid_size)} if grid_size else {}
    return _input_config(VolumeConfig, cfg.volume, "volume", phantoms, **defaults)


def _volume_dataset(items: list, vcfg, seed: int, progress: bool) -> tuple[Dataset, list[tuple[str, str]]]:
    """A VolumeDataset of the usable ``items`` (paths or Patients), and the skipped ones.

    Paths are loaded first, one by one (through the patient cache, which the dataset then reads again
    cheaply); if building the dataset still fails, each patient is processed on its own to find the ones
    that fail, and the dataset is built from the others.
    """
    from mddose.data.inputs.volume import VolumeDataset, patient_to_volume
    from mddose.data.io import load_patient

    skipped: list[tuple[str, str]] = []
    good = []
    for item in items:
        try:
            patient = item if not isinstance(item, (str, Path)) else load_patient(item)
            if patient.dose is None:
                raise MddoseError("has no dose (needed for training)", item)
            good.append(item)
        except Exception as exc:  # noqa: BLE001 - any failure of one patient: report it and go on
            skipped.append(_skip(item, exc))
    try:
        return VolumeDataset(good, vcfg, augment=True, seed=seed, progress=progress), skipped
    except Exception as exc:  # noqa: BLE001 - find the patient(s) that fail to process
        logger.warning("building the volume dataset failed (%s); checking each patient", describe_error(exc))
    usable = []
    for item in good:
        try:
            patient_to_volume(item if not isinstance(item, (str, Path)) else load_patient(item), vcfg)
            usable.append(item)
        except Exception as exc:  # noqa: BLE001
            skipped.append(_skip(item, exc))
    if not usable:
        raise MddoseError("no usable training patients" + (f" ({skipped[0][1]})" if skipped else ""))
    return VolumeDataset(usable, vcfg, augment=True, seed=seed, progress=progress), skipped


def build_volume_data(cfg: TrainConfig, *, grid_size: int | None = None, progress: bool = False) -> TrainData:
    """Whole volumes of the training patients (3D models), resampled to the model's grid, augmented as C3D."""
    if cfg.slices:
        raise MddoseError(f"train config: 'slices' is for 2D models; {cfg.model} is a 3D model (use 'volume')")
    train_src, val_p, phantoms, skipped = _patients(cfg)
    vcfg = volume_config_for(cfg, grid_size, phantoms)
    ds, more = _volume_dataset(train_src, vcfg, cfg.seed, progress)
    skipped += more
    if len(ds) == 0:
        raise MddoseError(f"no usable training patients in {cfg.data.train or 'phantoms'}"
                          + (f" ({len(more)} skipped, e.g. {more[0][1]})" if more else ""))
    return TrainData(train=ds, val_patients=val_p, data_config=vcfg, channels=vcfg.channels, grid=vcfg.size,
                     skipped=skipped)
