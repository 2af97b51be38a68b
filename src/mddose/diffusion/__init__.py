"""mddose.diffusion: DDPM schedule and loss (:class:`GaussianDiffusion`) and samplers (:func:`sample`).

Data units (dose / reference dose, [0, 1]) outside, model space [-1, 1] inside (``x = 2·x0 - 1``).
"""

from mddose.diffusion.samplers import SAMPLERS, sample, timesteps
from mddose.diffusion.schedule import GaussianDiffusion, make_betas

__all__ = ["GaussianDiffusion", "SAMPLERS", "make_betas", "sample", "timesteps"]
