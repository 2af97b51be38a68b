"""``diffusion``: the DDPM settings of a 2D diffusion model — written, defaulted and checked here only.

:class:`DiffusionConfig` is the train config's ``diffusion`` section and the checkpoint's ``diffusion`` entry;
:class:`~mddose.diffusion.schedule.GaussianDiffusion` is built from it. Every field has its one default below
and its one check in :meth:`DiffusionConfig.__post_init__` (one-line :class:`MddoseError` messages
``"diffusion.<key> must be ..."``; the train config and the checkpoint add the file's name in front).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from mddose.errors import MddoseError
from mddose.utils.config import check_number, dataclass_from_dict

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v", "x0")
LOSS_WEIGHTINGS = ("uniform", "min_snr")
LOSS_TYPES = ("mse", "l1")


@dataclass(frozen=True)
class DiffusionConfig:
    """The DDPM schedule and parameterisation, and how the training loss is weighted.

    ``prediction``: ``"eps"`` (the paper), ``"v"`` or ``"x0"``. ``loss_weighting``: ``"uniform"`` (Ho et al.'s
    simple loss) or ``"min_snr"`` (Min-SNR-γ with γ = ``min_snr_gamma``, ``inf`` allowed). ``mask_weight``:
    ``None`` (every pixel alike) or the loss weight of pixels outside the possible-dose mask (inside: 1), e.g. 0
    or 0.1 — the objective's, not the schedule's (it needs the batch's mask). ``loss_type``: ``"mse"`` (Ho et
    al.) or ``"l1"`` (uniform weighting only: Min-SNR-γ weights are derived for squared errors).
    """

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    schedule: str = "linear"
    prediction: str = "eps"
    loss_weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    mask_weight: float | None = None
    loss_type: str = "mse"

    def __post_init__(self) -> None:
        w = ""                 # messages name the key as "diffusion.<key>"; the caller adds the file
        for key, choices in (("schedule", SCHEDULES), ("prediction", PREDICTIONS),
                             ("loss_weighting", LOSS_WEIGHTINGS), ("loss_type", LOSS_TYPES)):
            if not isinstance(getattr(self, key), str):
                raise MddoseError(f"diffusion.{key} must be a string, got {getattr(self, key)!r}")
            if getattr(self, key) not in choices:
                raise MddoseError(f"diffusion.{key} must be one of {', '.join(choices)}, got {getattr(self, key)!r}")
        check_number(w, "diffusion.num_timesteps", self.num_timesteps, integer=True, at_least=1)
        for key in ("beta_start", "beta_end"):
            check_number(w, f"diffusion.{key}", getattr(self, key), above=0, below=1)
        if not self.beta_start <= self.beta_end:
            raise MddoseError(f"diffusion: need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.min_snr_gamma != math.inf:             # inf allowed (= the uniform loss)
            check_number(w, "diffusion.min_snr_gamma", self.min_snr_gamma, above=0)
        if self.mask_weight is not None:
            check_number(w, "diffusion.mask_weight", self.mask_weight, at_least=0, hint=" (null: no mask weighting)")
        if self.loss_type == "l1" and self.loss_weighting != "uniform":
            raise MddoseError("diffusion.loss_type 'l1' takes loss_weighting 'uniform' only (Min-SNR-γ weights "
                              "are derived for squared errors)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def schedule_dict(self) -> dict[str, Any]:
        """The checkpoint's ``diffusion`` entry: the schedule's settings; the loss weighting and the loss type only
        when they are not the defaults (so that default runs keep the entry they had before those existed)."""
        d = {k: getattr(self, k) for k in ("num_timesteps", "beta_start", "beta_end", "schedule", "prediction")}
        if self.loss_weighting != "uniform":
            d.update(loss_weighting=self.loss_weighting, min_snr_gamma=self.min_snr_gamma)
        if self.loss_type != "mse":
            d["loss_type"] = self.loss_type
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "diffusion config") -> "DiffusionConfig":
        """From a JSON object (missing keys: the defaults); a non-object, unknown keys or bad values → one-line
        :class:`MddoseError` naming ``where``."""
        return dataclass_from_dict(cls, d, where, prefix="diffusion.")
