"""The ``"regression"`` kind: 3D models that regress the dose of a whole volume (c3d, hd-unet).

* inputs: :class:`~mddose.data.inputs.volume.VolumeConfig` (train config section ``volume``, checkpoint key
  ``volume_config``); its ``size`` is the grid the model is built for (the model config's ``grid_size``);
  training data: whole volumes resampled to that grid, augmented as C3D (:class:`VolumeDataset`), or with
  ``grid: "crop"`` random ``size``³ patches of the possible-dose box at the original voxel size
  (:class:`~mddose.data.inputs.volume_crop.CropPatchDataset`);
* objective: masked L1 inside the possible-dose mask over the model's weighted outputs (C3D: ``0.5 · L1(A) +
  L1(B)``), validated by one forward pass per patient;
* prediction: the whole volume in one pass — by default the mean of four flips (option ``tta``) — resampled back
  (``grid: "crop"``: the crop by overlapping ``size``³ windows or in one pass, put back in its box;
  :func:`predict_patient`).

The network: ``model(cond (B, C, S, S, S)) -> (B, 1, S, S, S)``; ``model.training_outputs(cond)`` returns
``[(weight, prediction), ...]`` for deep supervision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mddose.data.inputs.volume import VolumeConfig
from mddose.errors import MddoseError
from mddose.kinds.base import ModelKind, TrainData, register_kind
from mddose.utils.batch import skip_item
from mddose.utils.fs import describe_error
from mddose.utils.log import logger


def _volume_dataset(items: list, vcfg: VolumeConfig, seed: int, progress: bool
                    ) -> tuple[Dataset, list[tuple[str, str]]]:
    """A VolumeDataset of the usable ``items`` (paths or Patients), and the skipped ones.

    Paths are loaded first, one by one (through the patient cache, which the dataset then reads again
    cheaply); if building the dataset still fails, each patient is processed on its own to find the ones
    that fail, and the dataset is built from the others.
    """
    from mddose.data.inputs.volume import VolumeDataset, patient_to_volume
    from mddose.data.inputs.volume_crop import CropPatchDataset, patient_to_crop
    from mddose.data.io import load_patient

    dataset, process = (CropPatchDataset, patient_to_crop) if vcfg.grid == "crop" else (VolumeDataset,
                                                                                         patient_to_volume)

    def loaded(item):
        return item if not isinstance(item, (str, Path)) else load_patient(item)

    skipped: list[tuple[str, str]] = []
    good = []
    for item in items:
        try:
            if loaded(item).dose is None:
                raise MddoseError("has no dose (needed for training)", item)
            good.append(item)
        except Exception as exc:  # noqa: BLE001 - any failure of one patient: report it and go on
            skipped.append(skip_item(item, exc))
    try:
        ds = dataset(good, vcfg, augment=True, seed=seed, progress=progress)
        return ds, skipped + list(getattr(ds, "bad", []))      # each patient the dataset could not use, named
    except Exception as exc:  # noqa: BLE001 - find the patient(s) that fail to process
        logger.warning("building the volume dataset failed (%s); checking each patient", describe_error(exc))
    usable = []
    for item in good:
        try:
            process(loaded(item), vcfg)
            usable.append(item)
        except Exception as exc:  # noqa: BLE001
            skipped.append(skip_item(item, exc))
    if not usable:
        raise MddoseError("no usable training patients" + (f" ({skipped[0][1]})" if skipped else ""))
    ds = dataset(usable, vcfg, augment=True, seed=seed, progress=progress)
    return ds, skipped + list(getattr(ds, "bad", []))


def build_volume_data(cfg, *, progress: bool = False) -> TrainData:
    """Whole volumes of the training patients of train config ``cfg``, resampled to ``cfg.inputs.size``³ (or
    their crops, served as ``size``³ patches, with ``grid: "crop"``)."""
    from mddose.data.inputs.common import with_targets
    from mddose.data.sources import training_sources

    train_src, val_p, _, skipped = training_sources(cfg.data)
    vcfg = cfg.inputs
    val_p, bad_val = with_targets(val_p, vcfg.targets)
    skipped += bad_val
    ds, more = _volume_dataset(train_src, vcfg, cfg.seed, progress)
    skipped += more
    if len(ds) == 0:
        raise MddoseError(f"no usable training patients in {cfg.data.train or 'phantoms'}"
                          + (f" ({len(more)} skipped, e.g. {more[0][1]})" if more else ""))
    return TrainData(train=ds, val_patients=val_p, data_config=vcfg, channels=vcfg.channels, skipped=skipped)


@torch.no_grad()
def predict_volume(model: nn.Module, cond: np.ndarray, *, tta: bool = False, vol_cfg: VolumeConfig | None = None,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """One forward pass of a 3D regression model: cond (C, S, S, S) → (1, S, S, S) float32 (dose / reference).

    ``tta``: mean over the four flips of :func:`mddose.data.inputs.volume.tta_predict` (needs ``vol_cfg``).
    """
    x = torch.from_numpy(np.ascontiguousarray(cond, dtype=np.float32))[None].to(device)
    if tta:
        from mddose.data.inputs.volume import tta_predict
        out = tta_predict(model, x, vol_cfg)
    else:
        out = model(x)
    return out[0].float().cpu().numpy()


def input_multiple(model: nn.Module) -> int:
    """The side multiple a 3D model's input needs: 2^(levels-1) of its config."""
    return 2 ** (int(model.config.levels) - 1)


@torch.no_grad()
def predict_patient(model: nn.Module, patient, vol_cfg: VolumeConfig, *, tta: bool = False,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """(Z, Y, X) float32 Gy of one patient on its grid, in the geometry of ``vol_cfg.grid``: the ``size``³
    volume resampled back (``"resample"``) or the crop (windows or whole, ``crop_predict``) put back in its box
    (``"crop"``)."""
    from mddose.data.inputs.volume import patient_to_volume, volume_to_patient

    if vol_cfg.grid == "crop":
        from mddose.data.inputs.volume_crop import predict_crop
        return predict_crop(model, patient, vol_cfg, input_multiple(model), tta=tta, device=device)
    arr = patient_to_volume(patient, vol_cfg)
    return volume_to_patient(predict_volume(model, arr.cond, tta=tta, vol_cfg=vol_cfg, device=device),
                             patient, vol_cfg)


@torch.no_grad()
def volume_dose_score(model: nn.Module, patients: Sequence, vol_cfg: VolumeConfig, *, tta: bool = False,
                      device: torch.device | str = "cpu") -> float:
    """Mean over patients of the mean absolute dose error (Gy) inside the possible-dose mask, each patient
    predicted whole and put back on its own grid (:func:`predict_patient`)."""
    was_training = model.training
    model.eval()
    scores = []
    for p in patients:
        if p.dose is None:
            continue
        dose = predict_patient(model, p, vol_cfg, tta=tta, device=device)
        mask = p.dose_mask()
        if mask.any():
            scores.append(float(np.abs(dose - p.dose)[mask].mean()))
    model.train(was_training)
    return float(np.mean(scores)) if scores else float("nan")


class _TrainingOutputs(nn.Module):
    """Wraps a regression model so that ``forward`` returns ``model.training_outputs(cond)`` — so that
    DistributedDataParallel sees (and synchronises) the call that produces the loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, cond: Tensor) -> list[tuple[float, Tensor]]:
        fn = getattr(self.model, "training_outputs", None)
        return fn(cond) if fn is not None else [(1.0, self.model(cond))]


class RegressionObjective:
    """Direct regression of a 3D model over whole volumes. Batch items: ``cond (B, C, S, S, S)``,
    ``dose (B, 1, S, S, S)`` (dose / reference), ``mask (B, 1, S, S, S)`` (possible-dose mask)."""

    def __init__(self, cfg=None):
        self.cfg = cfg

    def train_module(self, model: nn.Module) -> nn.Module:
        return _TrainingOutputs(model)

    @staticmethod
    def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Mean |pred − target| over the voxels where ``mask`` > 0 (all shapes (B, 1, S, S, S))."""
        m = (mask > 0).to(pred.dtype)
        return ((pred - target).abs() * m).sum() / m.sum().clamp(min=1.0)

    def loss(self, net: nn.Module, batch: dict, noise_gen: torch.Generator, global_batch: int, rank: int,
             device: torch.device) -> Tensor:
        cond = batch["cond"].to(device, non_blocking=True).float()
        dose = batch["dose"].to(device, non_blocking=True).float()
        mask = batch["mask"].to(device, non_blocking=True)
        outputs = net(cond)
        return sum(w * self.masked_l1(p.float(), dose, mask) for w, p in outputs)

    def validator(self, cfg, data: TrainData, device: torch.device) -> Callable[[nn.Module], float]:
        def validate(m: nn.Module) -> float:
            return volume_dose_score(m, data.val_patients, data.data_config, device=device)
        return validate


class Regression3D(ModelKind):
    """3D regression models (see the module docstring)."""

    name = "regression"
    words = "3D regression model"
    section = "volume"
    data_key = "volume_config"
    input_config = VolumeConfig
    options = {"tta": True}

    def build_data(self, cfg, *, progress: bool = False) -> TrainData:
        return build_volume_data(cfg, progress=progress)

    def objective(self, cfg) -> RegressionObjective:
        return RegressionObjective(cfg)

    def predict(self, bundle, patient, opts: dict, *, batch: int, seed: int, progress: bool):
        """The whole volume (or crop) in one pass (TTA: mean of four flips), back to the patient's grid;
        ``(dose, None)``."""
        device = next(bundle.model.parameters()).device
        with torch.inference_mode():
            dose = predict_patient(bundle.model, patient, bundle.data_config, tta=opts["tta"], device=device)
        return dose.astype(np.float32), None

    def iteration(self, model: nn.Module, channels: int, size: int,
                  device: str = "cpu") -> tuple[Callable[[], Any], str]:
        c = torch.randn(1, channels, size, size, size, device=device)
        return (lambda: model(c)), f"forward, {size}³ volume, batch 1"


REGRESSION_3D = register_kind(Regression3D())
