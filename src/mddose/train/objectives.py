"""Training objectives, one per model kind: what a batch's loss is, what data the model eats, how it is validated.

The registry entry of every model declares its ``kind`` (:mod:`mddose.models.registry`); the trainer
looks the objective up in :data:`OBJECTIVES` by that kind and never asks which network it drives.

* :class:`DiffusionObjective` — 2D denoisers ``model(x_t, t, cond)`` on axial slices
  (:mod:`mddose.data.inputs.slices`): the DDPM loss of :class:`~mddose.diffusion.GaussianDiffusion`
  (ε-, v- or x0-target, as ``diffusion.prediction`` says; uniform or Min-SNR-γ per timestep; optionally
  weighted by the possible-dose mask, ``diffusion.mask_weight``), validated by sampling (``val_samples``
  samples per slice averaged).
* :class:`RegressionObjective` — 3D regressors ``model(cond)`` on whole volumes
  (:mod:`mddose.data.inputs.volume`): masked L1 inside the possible-dose mask over the model's weighted
  outputs (C3D: ``0.5 · L1(A) + L1(B)``), validated by one forward pass per patient.

Both validators return the mean absolute dose error in Gy inside the possible-dose mask (lower is
better), which picks the ``best`` checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from mddose.errors import MddoseError
from mddose.train.config import TrainConfig


class _TrainingOutputs(nn.Module):
    """Wraps a regression model so that ``forward`` returns ``model.training_outputs(cond)`` — so that
    DistributedDataParallel sees (and synchronises) the call that produces the loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, cond: Tensor) -> list[tuple[float, Tensor]]:
        fn = getattr(self.model, "training_outputs", None)
        return fn(cond) if fn is not None else [(1.0, self.model(cond))]


class DiffusionObjective:
    """DDPM training of a 2D denoiser on slices. Batch items: ``cond (B, C, H, W)``, ``dose (B, 1, H, W)``, and
    with ``diffusion.mask_weight`` set ``mask (B, 1, H, W)`` (the slice's possible-dose mask, 0/1)."""

    kind = "diffusion"
    data_key = "slice_config"

    def __init__(self, cfg: TrainConfig):
        self.diffusion = cfg.diffusion.make_diffusion()
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

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"diffusion": self.diffusion.to_dict()}

    @staticmethod
    def build_data(cfg: TrainConfig, model_config, *, progress: bool = False):
        from mddose.train.data import build_slice_data
        return build_slice_data(cfg, progress=progress)

    def validator(self, cfg: TrainConfig, data, device: torch.device) -> Callable[[nn.Module], float]:
        from mddose.train.validate import patient_dose_score

        def validate(m: nn.Module) -> float:
            return patient_dose_score(m, self.diffusion, data.val_patients, data.data_config,
                                      sampler=cfg.val_sampler, steps=cfg.val_steps, samples=cfg.val_samples,
                                      max_slices=cfg.data.val_max_slices, seed=cfg.seed,
                                      batch_size=cfg.batch_size, device=device)
        return validate


class RegressionObjective:
    """Direct regression of a 3D model over whole volumes. Batch items: ``cond (B, C, S, S, S)``,
    ``dose (B, 1, S, S, S)`` (dose / reference), ``mask (B, 1, S, S, S)`` (possible-dose mask)."""

    kind = "regression"
    data_key = "volume_config"

    def __init__(self, cfg: TrainConfig):
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

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"diffusion": None}

    @staticmethod
    def build_data(cfg: TrainConfig, model_config, *, progress: bool = False):
        from mddose.train.data import build_volume_data
        return build_volume_data(cfg, grid_size=getattr(model_config, "grid_size", None), progress=progress)

    def validator(self, cfg: TrainConfig, data, device: torch.device) -> Callable[[nn.Module], float]:
        from mddose.train.validate import volume_dose_score

        def validate(m: nn.Module) -> float:
            return volume_dose_score(m, data.val_patients, data.data_config, device=device)
        return validate


#: model kind (registry) → objective class
OBJECTIVES: dict[str, type] = {"diffusion": DiffusionObjective, "regression": RegressionObjective}


def objective_for(cfg: TrainConfig, model: nn.Module | None = None):
    """The objective of ``cfg.model``'s kind (or of ``model``'s config when it is given)."""
    from mddose.models.registry import info_of, model_info

    mcfg = getattr(model, "config", None) if model is not None else None
    try:
        info = info_of(mcfg)
    except KeyError:             # no config, or one of an unregistered class: go by the train config
        info = model_info(cfg.model)
    return OBJECTIVES[info.kind](cfg)
