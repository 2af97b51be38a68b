"""Whole-patient prediction with any trained checkpoint → 3D dose (and uncertainty).

How a patient is predicted is the model's kind's (:meth:`mddose.kinds.base.ModelKind.predict`), never its name's:

* ``"diffusion"`` (2D denoisers: md-dose, diffdp, sp-diffdose): the patient is cut into the slices its
  checkpoint was trained on (inside the possible-dose mask or body), sampled in batches with any sampler of
  :mod:`mddose.diffusion`, and reassembled into the 3D dose. With ``samples=K > 1`` also the voxel-wise standard
  deviation over the K samples — an uncertainty map. Options: ``sampler``, ``steps``, ``eta``, ``samples``.
* ``"regression"`` (3D models: c3d, hd-unet): the whole volume, resampled to the model's grid, in one
  forward pass — by default the mean of four flips (test-time augmentation, as C3D) — and resampled
  back. Option: ``tta``.

Either way the dose is in Gy on the patient's own grid, zero outside the possible-dose mask.
An option of another kind is refused with a one-line error (:mod:`mddose.predict.options`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mddose.data.patient import Patient
from mddose.errors import MddoseError
from mddose.predict.options import checkpoint_defaults, resolve_options


@dataclass
class Prediction:
    """A predicted dose on the patient's grid.

    Attributes:
        dose: (Z, Y, X) float32 Gy (mean over samples).
        std: (Z, Y, X) float32 Gy voxel-wise standard deviation over samples, or None if K = 1.
    """

    patient_id: str
    dose: np.ndarray
    std: np.ndarray | None
    missing_rois: list[str] = field(default_factory=list)     # OARs the patient lacks: empty input channels
    empty_rois: list[str] = field(default_factory=list)       # ROIs whose file has no voxel: treated as absent


def missing_rois(patient: Patient, data_cfg) -> list[str]:
    """The OARs of the model's channels that ``patient`` lacks — "not contoured", as in OpenKBP, where most
    patients lack some OAR. They become empty channels, as in training.

    Raises:
        MddoseError: the patient has none of the model's targets, or none of its OARs (nothing to predict from).
    """
    if not any(t in patient.masks for t in data_cfg.targets):
        raise MddoseError(f"patient {patient.id}: has no target ROI (the model needs one of "
                          f"{', '.join(data_cfg.targets)})")
    missing = [n for n in data_cfg.oars if n not in patient.masks]
    if data_cfg.oars and len(missing) == len(data_cfg.oars):
        raise MddoseError(f"patient {patient.id}: has none of the model's OARs ({', '.join(data_cfg.oars)})")
    return missing


def model_name(bundle) -> str:
    """The checkpoint's model name (``"this model"`` when it records none)."""
    cfg = bundle.meta.get("model") if isinstance(bundle.meta, dict) else None
    return (cfg or {}).get("model", "this model")


def _check_prediction(pred: "Prediction", patient: Patient) -> None:
    """A broken checkpoint must not write a dose: non-finite or implausible predictions are refused."""
    from mddose.data.inspection import PLAUSIBLE_MAX_DOSE_GY

    if not np.isfinite(pred.dose).all():
        raise MddoseError(f"patient {patient.id}: the predicted dose is not finite (NaN/Inf): is the checkpoint "
                          "broken? Nothing written")
    top = float(pred.dose.max()) if pred.dose.size else 0.0
    if top > PLAUSIBLE_MAX_DOSE_GY or float(pred.dose.min(initial=0.0)) < 0:
        raise MddoseError(f"patient {patient.id}: the predicted dose is out of range ({pred.dose.min():.1f} .. "
                          f"{top:.1f} Gy, plausible 0 .. {PLAUSIBLE_MAX_DOSE_GY:g}): is the checkpoint broken? "
                          "Nothing written")


def predict_patient(bundle, patient: Patient, *, sampler: str | None = None, steps: int | None = None,
                    eta: float | None = None, samples: int | None = None, tta: bool | None = None,
                    smooth: float | None = None, batch: int = 8, seed: int = 0, progress: bool = False) -> Prediction:
    """Predict the 3D dose of one patient with a loaded checkpoint ``bundle`` (any kind of model).

    Args:
        bundle: a :class:`mddose.train.checkpoint.CheckpointBundle` (model in eval mode, configs).
        patient: the patient (dose, if any, is ignored).
        sampler, steps, eta: diffusion models only, see :func:`mddose.diffusion.sample` (default: the
            checkpoint's own (:func:`~mddose.predict.options.checkpoint_defaults`), else DDIM, 10, 0).
        samples: diffusion models only: K samples per slice; K > 1 also gives the std map (default 1).
        tta: 3D regression models only: mean of four flips (default True).
        smooth: tree ensembles only: Gaussian smoothing (mm) inside the possible-dose mask (default 0: none).
        batch: slices per sampler call (each call runs ``batch * samples`` images).
        seed: seed of the sampler's noise (predictions are reproducible).

    OARs the patient lacks become empty channels (listed in ``Prediction.missing_rois``); a patient without
    any target, or with none of the model's OARs, is refused by name; so is a non-finite or implausible
    prediction (a broken checkpoint).
    """
    opts = resolve_options(bundle.kind, model_name(bundle), checkpoint_defaults(bundle), sampler=sampler,
                           steps=steps, eta=eta, samples=samples, tta=tta, smooth=smooth)
    return predict_resolved(bundle, patient, opts, batch=batch, seed=seed, progress=progress)


def predict_resolved(bundle, patient: Patient, opts: dict, *, batch: int = 8, seed: int = 0,
                     progress: bool = False) -> Prediction:
    """:func:`predict_patient` with options already resolved (:func:`~mddose.predict.options.resolve_options`,
    once for a whole batch of patients)."""
    from mddose.data.inputs.common import drop_empty_rois

    used, empty = drop_empty_rois(patient, bundle.data_config.targets)     # an empty ROI file is an absent ROI
    missing = missing_rois(used, bundle.data_config)
    dose, std = bundle.model_kind.predict(bundle, used, opts, batch=batch, seed=seed, progress=progress)
    pred = Prediction(patient.id, dose, std, missing, empty)
    _check_prediction(pred, patient)
    return pred
