"""The ``"prior"`` kind: a physics prior used as a method — the ray-traced prior dose alone, nothing trained.

The shipped checkpoint ``prior-dose`` (``mddose/checkpoints/prior-dose/config.json``: ``kind: "prior"``, no
weights) makes it a method like any model: ``mddose predict --checkpoint prior-dose`` writes each patient's prior
dose (:func:`mddose.data.priors.compute_priors`, ``"prior_dose"``: the patient's RTPLAN fields when it has a
usable one, else the config's, default OpenKBP's nine), and a study can score it as a row
(``{"name": "Prior dose", "checkpoint": "prior-dose"}``).

* inputs: :class:`PriorDoseConfig` (checkpoint key ``prior_config``): the target ROIs, the priors spec (its
  dose model and beams);
* prediction: the prior dose in Gy on the patient's grid, zero outside the possible-dose mask; no options;
* training: none (refused in one line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from mddose.data.inputs.common import InputConfig, roi_names
from mddose.data.patient import OPENKBP_TARGETS
from mddose.errors import MddoseError
from mddose.kinds.base import ModelKind, register_kind


@dataclass(frozen=True)
class PriorDoseConfig(InputConfig):
    """What the prior dose is computed from: ``targets`` (their prescriptions scale the dose) and ``priors``
    (a :class:`~mddose.data.priors.PriorsSpec`; only its beams and dose model matter: the prior dose is computed).
    ``size`` is 0: nothing is resampled."""

    targets: tuple[str, ...] = tuple(OPENKBP_TARGETS)
    oars: tuple[str, ...] = ()
    priors: Any = None
    size: int = 0

    WHERE = "prior config"

    def __post_init__(self) -> None:
        from mddose.data.priors import PriorsSpec

        object.__setattr__(self, "targets", roi_names(self.WHERE, "targets", self.targets))
        object.__setattr__(self, "oars", roi_names(self.WHERE, "oars", self.oars))
        if not self.targets:
            raise MddoseError(f"{self.WHERE}: targets must name at least one ROI")
        self._check_priors()
        spec = self.priors or PriorsSpec(("prior_dose",))
        object.__setattr__(self, "priors", PriorsSpec(("prior_dose",), spec.arrangement, spec.dose))
        if self.size != 0:
            raise MddoseError(f"{self.WHERE}: size must be 0 (the prior dose is computed on the patient's grid)")

    @classmethod
    def for_phantoms(cls, **overrides: Any) -> "PriorDoseConfig":
        return cls(**{"targets": ("PTV",), **overrides})

    @property
    def base_channel_names(self) -> tuple[str, ...]:
        return ()

    @property
    def air_value(self) -> float:
        return 0.0


def prior_dose(patient, cfg: PriorDoseConfig) -> np.ndarray:
    """(Z, Y, X) float32 Gy: the patient's prior dose, ≥ 0 and zero outside its possible-dose mask."""
    from mddose.data.inputs.prior_channels import patient_priors

    dose = patient_priors(patient, cfg.priors, cfg.targets, 1.0)[0]
    np.clip(dose, 0.0, None, out=dose)
    dose[~patient.dose_mask()] = 0.0
    return dose


class PriorKind(ModelKind):
    """Physics priors used as methods (see the module docstring)."""

    name = "prior"
    words = "physics prior (nothing trained)"
    section = "prior"
    data_key = "prior_config"
    input_config = PriorDoseConfig
    options: dict[str, Any] = {}
    weightless = True

    def build_data(self, cfg, *, progress: bool = False):
        raise MddoseError("the prior dose is computed, not trained: predict with --checkpoint prior-dose")

    def objective(self, cfg):
        raise MddoseError("the prior dose is computed, not trained: predict with --checkpoint prior-dose")

    def model(self, meta: dict, where: str) -> nn.Module:
        """An empty module: the prior has no weights."""
        return nn.Module()

    def predict(self, bundle, patient, opts: dict, *, batch: int, seed: int, progress: bool):
        return prior_dose(patient, bundle.data_config), None

    def iteration(self, model: nn.Module, channels: int, size: int, device: str = "cpu"):
        raise MddoseError("the prior dose has no network to time")


PRIOR = register_kind(PriorKind())
