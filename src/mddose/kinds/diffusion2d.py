"""The ``"diffusion"`` kind: 2D denoisers on axial slices (md-dose, diffdp, sp-diffdose).

* inputs: :class:`~mddose.data.inputs.slices.SliceConfig` (train config section ``slices``, checkpoint key
  ``slice_config``); training data: every slice of the training patients (:class:`SliceDataset`), augmented per
  ``(seed, epoch, index)`` (:class:`AugmentedView`);
* objective: the DDPM loss of :class:`~mddose.diffusion.GaussianDiffusion` built from the train config's
  ``diffusion`` section (ε-, v- or x0-target; uniform or Min-SNR-γ per timestep; optionally weighted by the
  possible-dose mask, ``diffusion.mask_weight``), validated by sampling (``val_samples`` samples per slice averaged);
* checkpoint: the ``diffusion`` entry (the schedule);
* prediction: the patient's slices sampled in batches (options ``sampler``, ``steps``, ``eta``, ``samples``; with
  K > 1 samples also the voxel-wise standard deviation, an uncertainty map) and reassembled into the 3D dose.

The network: ``model(x_t (B, 1, H, W), t (B,), cond (B, C, H, W)) -> (B, 1, H, W)`` (ε, v or x0).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mddose.data.inputs.slices import SliceConfig
from mddose.diffusion import sample
from mddose.errors import MddoseError
from mddose.kinds.base import ModelKind, TrainData, register_kind


class AugmentedView(Dataset):
    """Wraps an un-augmented slice dataset; item ``i`` of epoch ``e`` is augmented with a generator
    seeded by ``(seed, e, i)`` — independent of workers, ranks and mid-epoch resume (exact resume)."""

    def __init__(self, base: Dataset, slice_cfg: SliceConfig, seed: int):
        self.base, self.cfg, self.seed, self.epoch = base, slice_cfg, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        from mddose.data.inputs.slices import augment_item
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(i))
        return augment_item(dict(self.base[i]), self.cfg, generator=g)     # cond, dose and mask jointly


def build_slice_data(cfg, *, progress: bool = False) -> TrainData:
    """Slices of the training patients of train config ``cfg``; validation patients loaded whole."""
    from mddose.data.inputs.common import with_targets
    from mddose.data.inputs.slice_dataset import SliceDataset
    from mddose.data.sources import training_sources

    train_src, val_p, _, skipped = training_sources(cfg.data)
    scfg = cfg.inputs
    val_p, bad_val = with_targets(val_p, scfg.targets)
    skipped += bad_val
    base = SliceDataset(train_src, scfg, augment=False, progress=progress)
    skipped += [(str(item), msg) for item, msg in getattr(base, "bad", [])]
    if len(base) == 0:
        raise MddoseError(f"no training slices in {cfg.data.train or 'phantoms'}")
    aug = scfg.flip_x or scfg.flip_y or scfg.rot90
    ds = AugmentedView(base, scfg, cfg.seed) if aug else base
    return TrainData(train=ds, val_patients=val_p, data_config=scfg, channels=scfg.channels, skipped=skipped)


# ---------------------------------------------------------------------------------------------- sampling
def sample_slices(model, diffusion, cond: Tensor, *, device, sampler: str, steps: int, seed: int, per_call: int,
                  samples: int = 1, eta: float = 0.0, progress: str | None = None) -> tuple[Tensor, Tensor]:
    """(mean, std), each (S, 1, H, W) float32 on the CPU in data units: ``samples`` samples of every slice of
    ``cond`` (S, C, H, W), ``per_call`` slices per sampler call (each call runs ``per_call * samples`` images),
    with one generator seeded by ``seed``; ``progress``: the description of a progress bar (None: none)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    starts = range(0, cond.shape[0], per_call)
    if progress is not None:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, unit="batch", leave=False)
    means, stds = [], []
    for i in starts:
        mean, std = sample(model, diffusion, cond[i:i + per_call].to(device), sampler=sampler, steps=steps, eta=eta,
                           samples=samples, generator=gen)
        means.append(mean.float().cpu())
        stds.append(std.float().cpu())
    return (torch.cat(means), torch.cat(stds)) if means else (torch.zeros(0), torch.zeros(0))


def validation_sample(model, diffusion, cond: Tensor, device, sampler: str, steps: int, seed: int, batch_size: int,
                       samples: int) -> Tensor:
    """(S, 1, H, W) mean of ``samples`` samples per slice; with K samples a call holds ``batch_size // K`` slices
    (at least 1), so that the network still sees about ``batch_size`` rows."""
    per_call = max(1, batch_size // samples) if samples > 1 else batch_size
    return sample_slices(model, diffusion, cond, device=device, sampler=sampler, steps=steps, seed=seed,
                         per_call=per_call, samples=samples)[0]


@torch.no_grad()
def patient_dose_score(model: nn.Module, diffusion, patients: Sequence, slice_cfg: SliceConfig, *,
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
        pred = validation_sample(model, diffusion, cond, device, sampler, steps, seed, batch_size, samples)
        vol = slices_to_volume(pred, z, p, slice_cfg)
        mask = p.dose_mask()[z]
        if mask.any():
            scores.append(float(np.abs(vol[z] - p.dose[z])[mask].mean()))
    model.train(was_training)
    return float(np.mean(scores)) if scores else float("nan")


# ---------------------------------------------------------------------------------------------- objective
class DiffusionObjective:
    """DDPM training of a 2D denoiser on slices. Batch items: ``cond (B, C, H, W)``, ``dose (B, 1, H, W)``, and
    with ``diffusion.mask_weight`` set ``mask (B, 1, H, W)`` (the slice's possible-dose mask, 0/1)."""

    def __init__(self, cfg):
        from mddose.diffusion import GaussianDiffusion

        self.diffusion = GaussianDiffusion(cfg.diffusion)
        self.mask_weight = cfg.diffusion.mask_weight

    def pixel_weight(self, batch: dict, device: torch.device) -> Tensor | None:
        """(B, 1, H, W) loss weights: 1 inside the batch's possible-dose ``mask``, ``mask_weight`` outside;
        None when ``mask_weight`` is None (every pixel alike). A batch without ``"mask"`` → one-line MddoseError."""
        if self.mask_weight is None:
            return None
        if "mask" not in batch:
            raise MddoseError("diffusion.mask_weight is set but the training slices carry no 'mask' "
                              "(possible-dose mask); remove mask_weight or use slices that provide it")
        inside = batch["mask"].to(device, non_blocking=True) > 0
        return torch.where(inside, 1.0, float(self.mask_weight)).float()

    def train_module(self, model: nn.Module) -> nn.Module:
        return model

    def loss(self, net: nn.Module, batch: dict, noise_gen: torch.Generator, global_batch: int, rank: int,
             device: torch.device) -> Tensor:
        """Loss of this rank's part of a global batch; noise and timesteps are drawn for the whole global
        batch from ``noise_gen`` (so the result does not depend on the number of ranks)."""
        cond = batch["cond"].to(device, non_blocking=True).float()
        x0 = batch["dose"].to(device, non_blocking=True).float()
        b = x0.shape[0]
        t_all = torch.randint(0, self.diffusion.num_timesteps, (global_batch,), generator=noise_gen)
        noise_all = torch.randn((global_batch, *x0.shape[1:]), generator=noise_gen)
        t = t_all[rank * b:(rank + 1) * b].to(device)
        noise = noise_all[rank * b:(rank + 1) * b].to(device)
        weight = self.pixel_weight(batch, device)
        if weight is None:
            return self.diffusion.loss(net, x0, cond, t=t, noise=noise)
        # normalised by this rank's weight sum (DDP then averages the ranks' means, so with mask_weight the
        # result depends slightly on how the global batch is split, unlike the default loss)
        return self.diffusion.loss(net, x0, cond, t=t, noise=noise, weight=weight)

    def validator(self, cfg, data: TrainData, device: torch.device) -> Callable[[nn.Module], float]:
        def validate(m: nn.Module) -> float:
            return patient_dose_score(m, self.diffusion, data.val_patients, data.data_config,
                                      sampler=cfg.val_sampler, steps=cfg.val_steps, samples=cfg.val_samples,
                                      max_slices=cfg.data.val_max_slices, seed=cfg.seed,
                                      batch_size=cfg.batch_size, device=device)
        return validate


# ---------------------------------------------------------------------------------------------- the kind
class Diffusion2D(ModelKind):
    """2D diffusion models (see the module docstring)."""

    name = "diffusion"
    words = "2D diffusion model"
    section = "slices"
    data_key = "slice_config"
    input_config = SliceConfig
    options = {"sampler": "ddim", "steps": 10, "eta": 0.0, "samples": 1}

    def build_data(self, cfg, *, progress: bool = False) -> TrainData:
        return build_slice_data(cfg, progress=progress)

    def objective(self, cfg) -> DiffusionObjective:
        return DiffusionObjective(cfg)

    def checkpoint_meta(self, cfg) -> dict[str, Any]:
        return {"diffusion": cfg.diffusion.schedule_dict()}

    def load_meta(self, meta: dict, where: str):
        """The checkpoint's :class:`~mddose.diffusion.GaussianDiffusion` (no entry or ``null``: the defaults)."""
        from mddose.diffusion import GaussianDiffusion

        d = meta.get("diffusion")
        return GaussianDiffusion.from_dict({} if d is None else d, str(where))

    def check_option(self, name: str, value: Any, where: str) -> None:
        super().check_option(name, value, where)
        from mddose.diffusion import SAMPLERS

        if (name in ("steps", "samples") and value < 1) or (name == "eta" and value < 0) \
                or (name == "sampler" and value not in SAMPLERS):
            rule = {"steps": "≥ 1", "samples": "≥ 1", "eta": "≥ 0",
                    "sampler": f"one of {', '.join(SAMPLERS)}"}[name]
            raise MddoseError(f"{where}: {name} must be {rule}, got {value!r}")

    def predict(self, bundle, patient, opts: dict, *, batch: int, seed: int, progress: bool):
        """Slices → sampler → volume; ``(dose, std)`` (std only with ``samples`` > 1)."""
        from mddose.data.inputs.slices import patient_to_slices, slices_to_volume

        slice_cfg = bundle.data_config
        samples = opts["samples"]
        arrays = patient_to_slices(patient, slice_cfg, for_prediction=True)
        cond = torch.from_numpy(np.ascontiguousarray(arrays.cond, dtype=np.float32))
        device = next(bundle.model.parameters()).device
        with torch.inference_mode():
            mean, std = sample_slices(bundle.model, bundle.diffusion, cond, device=device, sampler=opts["sampler"],
                                      steps=opts["steps"], eta=opts["eta"], samples=samples, seed=seed, per_call=batch,
                                      progress=f"predict {patient.id}" if progress else None)
        if mean.numel() == 0:
            mean = torch.zeros((0, 1, slice_cfg.size, slice_cfg.size))
            std = torch.zeros_like(mean)
        dose = slices_to_volume(mean.numpy(), arrays.z, patient, slice_cfg).astype(np.float32)
        std_vol = slices_to_volume(std.numpy(), arrays.z, patient, slice_cfg).astype(np.float32) if samples > 1 \
            else None
        return dose, std_vol

    def predicted_slices(self, bundle, patient) -> int:
        from mddose.data.inputs.slices import select_slices

        return int(len(select_slices(patient, bundle.data_config, for_prediction=True)))

    def iteration(self, model: nn.Module, channels: int, size: int,
                  device: str = "cpu") -> tuple[Callable[[], Any], str]:
        x, c = torch.randn(1, 1, size, size, device=device), torch.randn(1, channels, size, size, device=device)
        t = torch.full((1,), 500, dtype=torch.long, device=device)
        return (lambda: model(x, t, c)), f"denoiser call, {size}², batch 1"


DIFFUSION_2D = register_kind(Diffusion2D())
