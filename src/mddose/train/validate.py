"""Validation scores used to pick the best checkpoint (lower is better, Gy)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from mddose.diffusion import GaussianDiffusion, sample


def _predict(model, diffusion, cond: torch.Tensor, device, sampler: str, steps: int, seed: int,
             batch_size: int, samples: int = 1) -> torch.Tensor:
    """(S, 1, H, W) prediction in data units (the mean of ``samples`` samples per slice), batch by batch, with a
    fixed generator; ``cond``: (S, C, H, W). With K samples a batch holds ``batch_size // K`` slices (at least 1),
    so that the network still sees about ``batch_size`` rows."""
    g = torch.Generator().manual_seed(seed)
    out = []
    step = max(1, batch_size // samples) if samples > 1 else batch_size
    for i in range(0, cond.shape[0], step):
        mean, _ = sample(model, diffusion, cond[i:i + step].to(device), sampler=sampler, steps=steps,
                         samples=samples, generator=g)
        out.append(mean.cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def patient_dose_score(model: nn.Module, diffusion: GaussianDiffusion, patients: Sequence, slice_cfg, *,
                       sampler: str = "ddim", steps: int = 10, max_slices: int | None = 64, seed: int = 0,
                       batch_size: int = 16, device: torch.device | str = "cpu", samples: int = 1) -> float:
    """Mean over patients of the mean absolute dose error (Gy) inside the possible-dose mask.

    Each slice is predicted as the voxel-wise mean of ``samples`` samples (``TrainConfig.val_samples``).

    Slices come from :func:`mddose.data.inputs.slices.patient_to_slices` (prediction selection); with
    ``max_slices`` only that many (evenly spaced, shared among patients) are predicted and the error
    is measured on those axial slices only. Predictions go back to the grid with ``slices_to_volume``.
    """
    from mddose.data.inputs.slices import patient_to_slices, slices_to_volume

    was_training = model.training
    model.eval()
    per_patient = max(1, (max_slices or 10**9) // max(len(patients), 1))
    scores = []
    for p in patients:
        if p.dose is None:
            continue
        arr = patient_to_slices(p, slice_cfg, for_prediction=True)
        if len(arr.z) == 0:
            continue
        keep = np.unique(np.linspace(0, len(arr.z) - 1, min(per_patient, len(arr.z))).round().astype(int))
        cond, z = torch.from_numpy(arr.cond[keep]), arr.z[keep]
        pred = _predict(model, diffusion, cond, device, sampler, steps, seed, batch_size, samples)
        vol = slices_to_volume(pred, z, p, slice_cfg)
        mask = p.dose_mask()[z]
        if mask.any():
            scores.append(float(np.abs(vol[z] - p.dose[z])[mask].mean()))
    model.train(was_training)
    return float(np.mean(scores)) if scores else float("nan")


@torch.no_grad()
def slice_dose_score(model: nn.Module, diffusion: GaussianDiffusion, cond: torch.Tensor, dose: torch.Tensor,
                     reference_dose: float, *, sampler: str = "ddim", steps: int = 10, seed: int = 0,
                     batch_size: int = 16, device: torch.device | str = "cpu", samples: int = 1) -> float:
    """Mean absolute error (Gy) on slices, over pixels where the reference dose is > 0.

    cond: (S, C, H, W); dose: (S, 1, H, W) in data units (dose / reference dose); each slice predicted as the
    mean of ``samples`` samples.
    """
    was_training = model.training
    model.eval()
    pred = _predict(model, diffusion, cond, device, sampler, steps, seed, batch_size, samples)
    model.train(was_training)
    mask = dose > 0
    if not mask.any():
        mask = torch.ones_like(dose, dtype=torch.bool)
    return float(((pred - dose).abs() * reference_dose)[mask].mean())


@torch.no_grad()
def predict_volume(model: nn.Module, cond: np.ndarray, *, tta: bool = False, vol_cfg=None,
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


@torch.no_grad()
def volume_dose_score(model: nn.Module, patients: Sequence, vol_cfg, *, tta: bool = False,
                      device: torch.device | str = "cpu") -> float:
    """Mean over patients of the mean absolute dose error (Gy) inside the possible-dose mask, each patient
    predicted whole by a 3D model and resampled back to its own grid
    (:func:`mddose.data.inputs.volume.volume_to_patient`)."""
    from mddose.data.inputs.volume import patient_to_volume, volume_to_patient

    was_training = model.training
    model.eval()
    scores = []
    for p in patients:
        if p.dose is None:
            continue
        arr = patient_to_volume(p, vol_cfg)
        dose = volume_to_patient(predict_volume(model, arr.cond, tta=tta, vol_cfg=vol_cfg, device=device), p, vol_cfg)
        mask = p.dose_mask()
        if mask.any():
            scores.append(float(np.abs(dose - p.dose)[mask].mean()))
    model.train(was_training)
    return float(np.mean(scores)) if scores else float("nan")
