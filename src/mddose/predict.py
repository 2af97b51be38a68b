"""Whole-patient prediction with any trained checkpoint → 3D dose (and uncertainty) → files.

How a patient is predicted depends on the model's kind (:data:`PREDICTORS`), never on its name:

* ``"diffusion"`` (2D denoisers: md-dose, diffdp, sp-diffdose): :func:`predict_patient` cuts the
  patient into the slices its checkpoint was trained on (inside the possible-dose mask or body),
  samples them in batches with any sampler of :mod:`mddose.diffusion`, and reassembles the 3D dose.
  With ``samples=K > 1`` it also returns the voxel-wise standard deviation over the K samples — an
  uncertainty map. Options: ``sampler``, ``steps``, ``eta``, ``samples``.
* ``"regression"`` (3D models: c3d, hd-unet): the whole volume, resampled to the model's grid, in one
  forward pass — by default the mean of four flips (test-time augmentation, as C3D) — and resampled
  back. Option: ``tta``.

Either way the dose is in Gy on the patient's own grid, zero outside the possible-dose mask.
An option of the other kind is refused with a one-line error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mddose.data.patient import Patient
from mddose.errors import MddoseError
from mddose.train.predict_options import OPTION_DEFAULTS, checkpoint_defaults, resolve_options  # noqa: F401

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
    missing_rois: list[str] = field(default_factory=list)     # OARs the patient lacks: empty input channels


def _slice_config(bundle):
    from mddose.data.inputs.slices import SliceConfig

    cfg = bundle.slice_config
    return cfg if isinstance(cfg, SliceConfig) else SliceConfig.from_dict(cfg)


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


def _model_name(bundle) -> str:
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


def _predict_slices(bundle, patient: Patient, opts: dict, *, batch: int, seed: int, progress: bool) -> Prediction:
    """2D diffusion model: slices → sampler → volume (see the module docstring)."""
    from mddose.data.inputs.slices import patient_to_slices, slices_to_volume
    from mddose.diffusion import sample

    slice_cfg = _slice_config(bundle)
    samples = opts["samples"]
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
            mean, std = sample(model, bundle.diffusion, c, sampler=opts["sampler"], steps=opts["steps"],
                               eta=opts["eta"], samples=samples, generator=gen)
            means.append(mean.float().cpu().numpy())
            stds.append(std.float().cpu().numpy())
    mean = np.concatenate(means) if means else np.zeros((0, 1, slice_cfg.size, slice_cfg.size), np.float32)
    dose = slices_to_volume(mean, arrays.z, patient, slice_cfg)
    std_vol = None
    if samples > 1:
        std = np.concatenate(stds) if stds else np.zeros_like(mean)
        std_vol = slices_to_volume(std, arrays.z, patient, slice_cfg)
    return Prediction(patient.id, dose.astype(np.float32), None if std_vol is None else std_vol.astype(np.float32))


def _predict_volume(bundle, patient: Patient, opts: dict, *, batch: int, seed: int, progress: bool) -> Prediction:
    """3D regression model: the whole volume in one pass (TTA: mean of four flips), back to the patient's grid."""
    from mddose.data.inputs.volume import patient_to_volume, volume_to_patient
    from mddose.train.validate import predict_volume

    vol_cfg = bundle.volume_config
    model = bundle.model
    device = next(model.parameters()).device
    arrays = patient_to_volume(patient, vol_cfg)
    with torch.inference_mode():
        pred = predict_volume(model, arrays.cond, tta=opts["tta"], vol_cfg=vol_cfg, device=device)
    return Prediction(patient.id, volume_to_patient(pred, patient, vol_cfg).astype(np.float32), None)


#: model kind → how one patient is predicted
PREDICTORS = {"diffusion": _predict_slices, "regression": _predict_volume}


def predict_patient(bundle, patient: Patient, *, sampler: str | None = None, steps: int | None = None,
                    eta: float | None = None, samples: int | None = None, tta: bool | None = None, batch: int = 8,
                    seed: int = 0, progress: bool = False) -> Prediction:
    """Predict the 3D dose of one patient with a loaded checkpoint ``bundle`` (any kind of model).

    Args:
        bundle: a :class:`mddose.train.checkpoint.CheckpointBundle` (model in eval mode, configs).
        patient: the patient (dose, if any, is ignored).
        sampler, steps, eta: diffusion models only, see :func:`mddose.diffusion.sample` (default: the
            checkpoint's own (:func:`checkpoint_defaults`), else DDIM, 10, 0).
        samples: diffusion models only: K samples per slice; K > 1 also gives the std map (default 1).
        tta: 3D regression models only: mean of four flips (default True).
        batch: slices per sampler call (each call runs ``batch * samples`` images).
        seed: seed of the sampler's noise (predictions are reproducible).

    OARs the patient lacks become empty channels (listed in ``Prediction.missing_rois``); a patient without
    any target, or with none of the model's OARs, is refused by name; so is a non-finite or implausible
    prediction (a broken checkpoint).
    """
    opts = resolve_options(bundle.kind, _model_name(bundle), checkpoint_defaults(bundle), sampler=sampler,
                           steps=steps, eta=eta, samples=samples, tta=tta)
    missing = missing_rois(patient, bundle.data_config)
    pred = PREDICTORS[bundle.kind](bundle, patient, opts, batch=batch, seed=seed, progress=progress)
    pred.missing_rois = missing
    _check_prediction(pred, patient)
    return pred


def _output_path(out: Path, patient_id: str, *parts: str) -> Path:
    """``out/<parts with {id}>`` for one patient, refused unless it is a file name inside ``out``.

    Defence in depth (the patient contract already refuses unsafe ids): the id must be one plain path
    component and the path, symlinks resolved, must lie inside ``out``.
    """
    pid = str(patient_id)
    if pid in ("", ".", "..") or Path(pid).name != pid or "/" in pid or "\\" in pid or "\0" in pid:
        raise MddoseError(f"patient id {pid!r} is not a safe file name; refusing to write its prediction")
    path = out.joinpath(*(p.format(id=pid) for p in parts))
    root = out.resolve()
    real = path.resolve()
    if real != root and root not in real.parents:
        raise MddoseError(f"patient {pid}: {path} resolves to {real}, outside the output directory {root}; "
                          "refusing to write there")
    return path


#: format → paths (under the output directory) of the dose and of the uncertainty map; ``{id}`` = patient id
OUTPUT_LAYOUT = {
    "openkbp": (("{id}.csv",), ("uncertainty", "{id}.csv")),
    "nifti": (("{id}.nii.gz",), ("uncertainty", "{id}.nii.gz")),
    "dicom": (("{id}", "RTDOSE.dcm"), ("uncertainty", "{id}.nii.gz")),
}


def write_prediction(pred: Prediction, patient: Patient, out: Path, fmt: str) -> list[Path]:
    """Write one patient's prediction into ``out`` in format ``fmt``; returns the files written.

    Layout (:data:`OUTPUT_LAYOUT`): ``openkbp`` → ``out/<id>.csv`` (+ ``out/uncertainty/<id>.csv``);
    ``nifti`` → ``out/<id>.nii.gz`` (+ ``out/uncertainty/<id>.nii.gz``); ``dicom`` → ``out/<id>/RTDOSE.dcm``
    referencing the patient's CT (+ ``out/uncertainty/<id>.nii.gz``). Each file is written atomically.
    Every path is checked to be inside ``out`` before anything is written (:class:`MddoseError` otherwise).
    """
    if fmt not in OUTPUT_LAYOUT:
        raise MddoseError(f"--format: unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    out = Path(out)
    dose_parts, std_parts = OUTPUT_LAYOUT[fmt]
    dose_path = _output_path(out, pred.patient_id, *dose_parts)
    std_path = _output_path(out, pred.patient_id, *std_parts) if pred.std is not None else None
    if fmt == "openkbp":
        from mddose.data.formats.openkbp import write_dose_csv

        write_dose_csv(pred.dose, dose_path)
        if std_path is not None:
            write_dose_csv(pred.std, std_path)
    else:
        from mddose.data.formats.nifti import write_nifti_array

        if fmt == "nifti":
            write_nifti_array(pred.dose, dose_path, like=patient)
        else:
            from mddose.data.formats.dicom.write import write_rtdose

            dose_path.parent.mkdir(parents=True, exist_ok=True)
            write_rtdose(pred.dose, patient, dose_path)
        if std_path is not None:
            write_nifti_array(pred.std, std_path, like=patient)
    return [dose_path] if std_path is None else [dose_path, std_path]


def _pick_device(device: str) -> torch.device:
    """``auto`` → CUDA if available else CPU; a bad or unavailable device → one-line :class:`MddoseError`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise MddoseError(f"--device: unknown device {device!r} (auto | cpu | cuda | cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MddoseError(f"--device: {device} requested but CUDA is not available")
    return dev


def _prepare_output(out: Path, force: bool) -> None:
    """Create ``out`` (refusing a non-empty one without ``force``), after removing the stale temporary files
    a killed run left in it (:func:`mddose.utils.fs.clean_stale_temps`); refuse an unwritable one."""
    from mddose.utils.fs import clean_stale_temps

    if out.exists() and not out.is_dir():
        raise MddoseError("output exists and is not a directory", out)
    if out.is_dir():
        for d in (out, out / "uncertainty"):
            clean_stale_temps(d)
        if (out / "uncertainty").is_dir() and not any((out / "uncertainty").iterdir()):
            (out / "uncertainty").rmdir()       # left empty by a killed run (our own layout directory)
        if any(out.iterdir()) and not force:
            raise MddoseError("output directory exists and is not empty (use --force to add to / overwrite it)", out)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK | os.X_OK):
        raise MddoseError("output directory is not writable", out)


def _load_all(input_path, progress: bool) -> tuple[list[tuple[str, Patient]], list[tuple[str, str]]]:
    """Every readable patient under ``input_path`` as ``(directory, patient)``, and ``(directory, error)`` for
    the others — whatever the exception (each logged as one warning line; the traceback at debug level)."""
    from mddose.data.io import load_patient, patient_dirs

    loaded: list[tuple[str, Patient]] = []
    errors: list[tuple[str, str]] = []
    dirs = patient_dirs(input_path)
    if progress:
        from tqdm.auto import tqdm

        dirs = tqdm(dirs, desc="loading patients", unit="patient", leave=False)
    for d in dirs:
        try:
            loaded.append((str(d), load_patient(d)))
        except Exception as exc:  # noqa: BLE001 - a bad patient is reported, the batch goes on
            errors.append((str(d), _report(d, exc)))
    return loaded, errors


def _report(item, exc: BaseException) -> str:
    """Log a failed item as one warning line (traceback at debug level for unexpected exceptions)."""
    from mddose.utils.fs import describe_error

    msg = describe_error(exc)
    log.warning("skipping %s", msg if str(item) in msg else f"{item}: {msg}")
    if not isinstance(exc, (MddoseError, OSError)):
        log.debug("traceback of the failure of %s", item, exc_info=exc)
    return msg


def _refuse_duplicates(loaded: list[tuple[str, Patient]]) -> tuple[list[tuple[str, Patient]], list[tuple[str, str]]]:
    """Split off every patient whose id (case-insensitively: file names) another patient of the batch has too."""
    by_id: dict[str, list[str]] = {}
    for d, p in loaded:
        by_id.setdefault(str(p.id).casefold(), []).append(d)
    keep, errors = [], []
    for d, p in loaded:
        dirs = by_id[str(p.id).casefold()]
        if len(dirs) > 1:
            others = ", ".join(x for x in dirs if x != d)
            exc = MddoseError(f"patient id {p.id!r} is also the id of {others}; refusing both (ids name the "
                              "output files and must be unique in one batch)", d)
            errors.append((d, _report(d, exc)))
        else:
            keep.append((d, p))
    return keep, errors


def predict_to_dir(checkpoint: str | Path, input_path: str | Path, out: str | Path, *, fmt: str = "openkbp",
                   sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                   samples: int | None = None, tta: bool | None = None, batch: int = 8,
                   force: bool = False, seed: int = 0,
                   device: str = "auto", progress: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """Predict every patient under ``input_path`` and write them into ``out`` — and nowhere else.

    Options left at None take the checkpoint's own defaults (:func:`checkpoint_defaults`), else those of its
    kind of model (:data:`OPTION_DEFAULTS`);
    an option of the other kind is refused before any work. Returns ``(ids written, [(patient directory,
    error), ...])``: a patient that cannot be read or predicted — whatever the exception — or whose id another
    patient of the batch has too, is reported (one warning line) and skipped, the others are written.
    Raises :class:`MddoseError` when nothing could be predicted.
    """
    if fmt not in OUTPUT_FORMATS:
        raise MddoseError(f"--format: unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if batch < 1:
        raise MddoseError(f"--batch: must be ≥ 1, got {batch}")
    from mddose.train.checkpoint import load_checkpoint

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MddoseError("output exists and is not a directory", out)
    if out.is_dir() and not force:
        _prepare_output(out, force)             # refuse a non-empty output before the (slow) checkpoint load
    dev = _pick_device(device)
    from mddose.train.shipped import resolve_checkpoint
    checkpoint = resolve_checkpoint(checkpoint)
    bundle = load_checkpoint(checkpoint)
    opts = resolve_options(bundle.kind, _model_name(bundle), checkpoint_defaults(bundle), sampler=sampler,
                           steps=steps, eta=eta, samples=samples, tta=tta)
    loaded, errors = _load_all(input_path, progress)
    loaded, dup_errors = _refuse_duplicates(loaded)
    errors += dup_errors
    if loaded:
        _prepare_output(out, force)
        bundle.model.to(dev)
    done: list[str] = []
    empty: dict[str, list[str]] = {}
    it = loaded
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loaded, desc="patients", unit="patient")
    for d, patient in it:
        try:
            pred = predict_patient(bundle, patient, **opts, batch=batch, seed=seed, progress=progress)
            if pred.missing_rois:
                log.info("patient %s: no %s: empty input channel(s), as in training", patient.id,
                         ", ".join(pred.missing_rois))
                empty[patient.id] = pred.missing_rois
            write_prediction(pred, patient, out, fmt)
            done.append(patient.id)
        except Exception as exc:  # noqa: BLE001 - a bad patient is reported, the batch goes on
            errors.append((d, _report(f"{d} (patient {patient.id})", exc)))
    if done:
        _write_run_info(out, checkpoint=checkpoint, input_path=input_path, fmt=fmt, kind=bundle.kind,
                        model=_model_name(bundle), **opts, seed=seed, patients=done, errors=errors,
                        missing_rois=empty)
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
