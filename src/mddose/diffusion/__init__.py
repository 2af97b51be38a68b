"""mddose.diffusion: DDPM schedule and loss (:class:`GaussianDiffusion`, ε-, v- or x0-prediction, uniform or
Min-SNR-γ loss weighting, optional pixel weights) and samplers.

:func:`sample` draws doses with any sampler of the table :data:`SAMPLERS` (``"ddpm"``, ``"ddim"``,
``"dpmpp2m"``), each a public function ``sample_xxx(model_fn, x, ts, *, generator=None, callback=None,
**options)`` (see :mod:`mddose.diffusion.samplers`).

Data units (dose / reference dose, [0, 1]) outside, model space [-1, 1] inside (``x = 2·x0 - 1``).
"""

from mddose.diffusion.config import DiffusionConfig
from mddose.diffusion.samplers import (SAMPLERS, Denoiser, sample, sample_ddim, sample_ddpm, sample_dpmpp2m,
                                       timesteps)
from mddose.diffusion.schedule import LOSS_WEIGHTINGS, PREDICTIONS, GaussianDiffusion, make_betas

__all__ = ["Denoiser", "DiffusionConfig", "GaussianDiffusion", "LOSS_WEIGHTINGS", "PREDICTIONS", "SAMPLERS",
           "make_betas", "sample", "sample_ddim", "sample_ddpm", "sample_dpmpp2m", "timesteps"]
