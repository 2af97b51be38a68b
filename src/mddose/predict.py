"""Whole-patient prediction: slices → diffusion sampler → 3D dose (and uncertainty) → files.

The trained denoiser works on 2D axial slices; :func:`predict_patient` cuts a patient into the
slices its checkpoint was trained on (inside the possible-dose mask or body), samples them in
batches with any sampler of :mod:`mddose.diffusion`, and reassembles the 3D dose in Gy on the
patient's own grid (zero outside the possible-dose mask). With ``samples=K > 1`` it also returns
the voxel-wise standard deviation over the K samples — an uncertainty map.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mddose.data.patient import Patient
from mddose.errors import MddoseError

log = logging.getLogger(__name__)

#: Output formats of :func:`predict_to_dir` → file suffix of one patient's dose.
OUTPUT_FORMATS = ("openkbp", "nifti", "dicom")


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


def _slice_config(bundle):
    from mddose.data.slices import SliceConfig

    cfg = bundle.slice_config
    return cfg if isinstance(cfg, SliceConfig) else SliceConfig.from_dict(cfg)


def missing_rois(patient: Patient, slice_cfg) -> list[str]:
    """Names of the ROIs the model's channels need that ``patient`` lacks (targets: at least one needed)."""
    missing = [n for n in slice_cfg.oars if n not in patient.masks]
    if not any(t in patient.masks for t in slice_cfg.targets):
        missing += list(slice_cfg.targets)
    return missing


def predict_patient(bundle, patient: Patient, *, sampler: str = "ddim", steps: int = 10, eta: float = 0.0,
                    samples: int = 1, batch: int = 8, allow_missing_rois: bool = False, seed: int = 0,
                    progress: bool = False) -> Prediction:
    """Predict the 3D dose of one patient with a loaded checkpoint ``bundle``.

    Args:
        bundle: a :class:`mddose.train.checkpoint.CheckpointBundle` (model in eval mode, configs).
        patient: the patient (dose, if any, is ignored).
        sampler, steps, eta: see :func:`mddose.diffusion.sample`.
        samples: K samples per slice; K > 1 also gives the std map.
        batch: slices per sampler call (each call runs ``batch * samples`` images).
        allow_missing_rois: fill channels of ROIs the patient lacks with zeros instead of failing.
        seed: seed of the sampler's noise (predictions are reproducible).
    """
    from mddose.data.slices import patient_to_slices, slices_to_volume
    from mddose.diffusion import sample

    slice_cfg = _slice_config(bundle)
    missing = missing_rois(patient, slice_cfg)
    if missing and not allow_missing_rois:
        raise MddoseError(f"patient {patient.id}: lacks ROI(s) the model was trained with: {', '.join(missing)} "
                          "(use --allow-missing-rois to fill empty channels)")
    arrays = patient_to_slices(patient, slice_cfg, for_prediction=True)
    cond = torch.from_numpy(np.ascontiguousarray(arrays.cond, dtype=np.float32))
    model = bundle.model
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    means, stds = [], []
    steps_iter = range(0, cond.shape[0], batch)
    if progress:
        from tqdm.auto import tqdm

        steps_iter = tqdm(steps_iter, desc=f"predict {patient.id}", unit="batch", leave=False)
    with torch.inference_mode():
        for i in steps_iter:
            c = cond[i:i + batch].to(device)
            mean, std = sample(model, bundle.diffusion, c, sampler=sampler, steps=steps, eta=eta,
                               samples=samples, generator=gen)
            means.append(mean.float().cpu().numpy())
            stds.append(std.float().cpu().numpy())
    mean = np.concatenate(means) if means else np.zeros((0, 1, slice_cfg.size, slice_cfg.size), np.float32)
    dose = slices_to_volume(mean, arrays.z, patient, slice_cfg)
    std_vol = None
    if samples > 1:
        std = np.concatenate(stds) if stds else np.zeros_like(mean)
        std_vol = slices_to_volume(std, arrays.z, patient, slice_cfg)
    return Prediction(patient.id, dose.astype(np.float32), None if std_vol is None else std_vol.astype(np.float32))


def write_prediction(pred: Prediction, patient: Patient, out: Path, fmt: str) -> list[Path]:
    """Write one patient's prediction into ``out`` in format ``fmt``; returns the files written.

    Layout: ``openkbp`` → ``out/<id>.csv`` (+ ``out/uncertainty/<id>.csv``); ``nifti`` →
    ``out/<id>.nii.gz`` (+ ``out/uncertainty/<id>.nii.gz``); ``dicom`` → ``out/<id>/RTDOSE.dcm``
    referencing the patient's CT (+ ``out/uncertainty/<id>.nii.gz``). Each file is written atomically.
    """
    written: list[Path] = []
    if fmt == "openkbp":
        from mddose.data.openkbp import write_dose_csv

        write_dose_csv(pred.dose, out / f"{pred.patient_id}.csv")
        written.append(out / f"{pred.patient_id}.csv")
        if pred.std is not None:
            write_dose_csv(pred.std, out / "uncertainty" / f"{pred.patient_id}.csv")
            written.append(out / "uncertainty" / f"{pred.patient_id}.csv")
        return written
    from mddose.data.nifti import write_nifti_array

    if fmt == "nifti":
        write_nifti_array(pred.dose, out / f"{pred.patient_id}.nii.gz", like=patient)
        written.append(out / f"{pred.patient_id}.nii.gz")
    elif fmt == "dicom":
        from mddose.data.dicom import write_rtdose

        path = out / pred.patient_id / "RTDOSE.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_rtdose(pred.dose, patient, path)
        written.append(path)
    else:
        raise MddoseError(f"--format: unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if pred.std is not None:
        write_nifti_array(pred.std, out / "uncertainty" / f"{pred.patient_id}.nii.gz", like=patient)
        written.append(out / "uncertainty" / f"{pred.patient_id}.nii.gz")
    return written


def predict_to_dir(checkpoint: str | Path, input_path: str | Path, out: str | Path, *, fmt: str = "openkbp",
                   sampler: str = "ddim", steps: int = 10, eta: float = 0.0, samples: int = 1, batch: int = 8,
                   allow_missing_rois: bool = False, force: bool = False, seed: int = 0,
                   device: str = "auto", progress: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """Predict every patient under ``input_path`` and write them into ``out``.

    Returns ``(ids written, [(patient or path, error), ...])``; bad patients are reported and skipped.
    Raises :class:`MddoseError` when nothing could be predicted.
    """
    from mddose.data.io import load_patients
    from mddose.train.checkpoint import load_checkpoint

    if fmt not in OUTPUT_FORMATS:
        raise MddoseError(f"--format: unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if samples < 1:
        raise MddoseError(f"--samples: must be ≥ 1, got {samples}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise MddoseError("output directory exists and is not empty (use --force to add to / overwrite it)", out)
    bundle = load_checkpoint(checkpoint)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    bundle.model.to(dev)
    patients, errors = load_patients(input_path)
    errors = list(errors)
    done: list[str] = []
    it = patients
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(patients, desc="patients", unit="patient")
    for patient in it:
        try:
            pred = predict_patient(bundle, patient, sampler=sampler, steps=steps, eta=eta, samples=samples,
                                   batch=batch, allow_missing_rois=allow_missing_rois, seed=seed,
                                   progress=progress)
            write_prediction(pred, patient, out, fmt)
            done.append(patient.id)
        except MddoseError as exc:
            log.warning("%s", exc)
            errors.append((patient.id, str(exc)))
    if done:
        _write_run_info(out, checkpoint=checkpoint, input_path=input_path, fmt=fmt, sampler=sampler, steps=steps,
                        eta=eta, samples=samples, seed=seed, patients=done, errors=errors)
    if not done:
        detail = "; ".join(f"{p}: {e}" for p, e in errors[:3]) or "no patients found"
        raise MddoseError(f"nothing was predicted ({detail})", input_path)
    return done, errors


def _write_run_info(out: Path, **info) -> None:
    """``out/predict.json``: how the predictions were made (the report finds the reference data here)."""
    import json

    from mddose import __version__
    from mddose.utils.fs import atomic_write

    info = {k: (str(Path(v).resolve()) if k in ("checkpoint", "input_path") else v) for k, v in info.items()}
    info["input"] = info.pop("input_path")
    info["errors"] = [list(e) for e in info["errors"]]
    info["mddose_version"] = __version__
    with atomic_write(out / "predict.json", "w") as fh:
        json.dump(info, fh, indent=2)
