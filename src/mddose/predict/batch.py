"""Predicting a folder of patients into an output folder: every patient that can be, the others reported."""

from __future__ import annotations

import os
from pathlib import Path

from mddose.data.patient import Patient
from mddose.errors import MddoseError
from mddose.predict.files import OUTPUT_FORMATS, write_prediction
from mddose.predict.options import checkpoint_defaults, resolve_options
from mddose.predict.patient import model_name, predict_resolved
from mddose.utils.batch import skip_item
from mddose.utils.device import pick_device
from mddose.utils.log import logger as log


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
            errors.append((str(d), skip_item(d, exc)[1]))
    return loaded, errors


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
            errors.append((d, skip_item(d, exc)[1]))
        else:
            keep.append((d, p))
    return keep, errors


def predict_to_dir(checkpoint: str | Path, input_path: str | Path, out: str | Path, *, fmt: str = "openkbp",
                   sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                   samples: int | None = None, tta: bool | None = None, smooth: float | None = None,
                   batch: int = 8, force: bool = False, seed: int = 0, beams=None,
                   device: str = "auto", progress: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """Predict every patient under ``input_path`` and write them into ``out`` — and nowhere else.

    Options left at None take the checkpoint's own defaults (:func:`checkpoint_defaults`), else those of its
    kind of model (:attr:`mddose.kinds.base.ModelKind.options`), resolved once here;
    an option of the other kind is refused before any work. Returns ``(ids written, [(patient directory,
    error), ...])``: a patient that cannot be read or predicted — whatever the exception — or whose id another
    patient of the batch has too, is reported (one warning line) and skipped, the others are written.
    ``beams``: the fields (``"0,40,…"`` or angles) of patients without an RTPLAN, for a model trained with beam
    priors (:func:`~mddose.predict.options.with_beams`; refused in one line for any other).
    Raises :class:`MddoseError` when nothing could be predicted.

    ``force`` with a non-empty ``out``: the new result is built in a folder beside it, the files of ``out`` it
    did not write are kept (hard links: other patients', a failed patient's previous prediction; listed as
    ``kept`` in ``predict.json``), and it replaces ``out`` only once complete — a run that fails or is killed
    leaves ``out`` as it was (:func:`_replace_output`).
    """
    if fmt not in OUTPUT_FORMATS:
        raise MddoseError(f"--format: unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if batch < 1:
        raise MddoseError(f"--batch: must be ≥ 1, got {batch}")
    from mddose.predict.options import parse_beams, with_beams
    arrangement = parse_beams(beams)
    from mddose.train.checkpoint import load_checkpoint

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MddoseError("output exists and is not a directory", out)
    if out.is_dir() and not force:
        _prepare_output(out, force)             # refuse a non-empty output before the (slow) checkpoint load
    dev = pick_device(device)
    from mddose.predict.shipped import resolve_checkpoint
    checkpoint = resolve_checkpoint(checkpoint)
    bundle = load_checkpoint(checkpoint)
    bundle = with_beams(bundle, arrangement, f"checkpoint {checkpoint.name}")
    opts = resolve_options(bundle.kind, model_name(bundle), checkpoint_defaults(bundle), sampler=sampler,
                           steps=steps, eta=eta, samples=samples, tta=tta, smooth=smooth)
    loaded, errors = _load_all(input_path, progress)
    loaded, dup_errors = _refuse_duplicates(loaded)
    errors += dup_errors
    info = dict(checkpoint=checkpoint, input_path=input_path, fmt=fmt, kind=bundle.kind, model=model_name(bundle),
                **opts, seed=seed)
    if loaded:
        bundle.model.to(dev)
    if loaded and force and out.is_dir() and any(out.iterdir()):
        return _replace_output(out, bundle, loaded, errors, opts, info, batch=batch, seed=seed, progress=progress)
    if loaded:
        _prepare_output(out, force)
    done, rois = _predict_all(bundle, loaded, errors, opts, out, fmt, batch=batch, seed=seed, progress=progress)
    if done:
        _write_run_info(out, **info, patients=done, errors=errors, **rois)
    _refuse_nothing(done, errors, input_path)
    return done, errors


def _refuse_nothing(done: list[str], errors: list[tuple[str, str]], input_path) -> None:
    if not done:
        detail = "; ".join(f"{p}: {e}" for p, e in errors[:3]) or "no patients found"
        raise MddoseError(f"nothing was predicted ({detail})", input_path)


def _predict_all(bundle, loaded: list[tuple[str, Patient]], errors: list[tuple[str, str]], opts: dict, out: Path,
                 fmt: str, *, batch: int, seed: int, progress: bool) -> tuple[list[str], dict[str, dict]]:
    """Predict every loaded patient into ``out``; a failure is appended to ``errors`` (one warning line) and the
    batch goes on. Returns the ids written and ``{"missing_rois": {id: ROIs missing from its inputs},
    "empty_rois": {id: ROI files with no voxel, treated as absent}}``."""
    done: list[str] = []
    empty: dict[str, list[str]] = {}
    empty_files: dict[str, list[str]] = {}
    it = loaded
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loaded, desc="patients", unit="patient")
    for d, patient in it:
        try:
            pred = predict_resolved(bundle, patient, opts, batch=batch, seed=seed, progress=progress)
            if pred.empty_rois:
                empty_files[patient.id] = pred.empty_rois
            if pred.missing_rois:
                log.info("patient %s: no %s: empty input channel(s), as in training", patient.id,
                         ", ".join(pred.missing_rois))
                empty[patient.id] = pred.missing_rois
            write_prediction(pred, patient, out, fmt)
            done.append(patient.id)
        except Exception as exc:  # noqa: BLE001 - a bad patient is reported, the batch goes on
            errors.append((d, skip_item(f"{d} (patient {patient.id})", exc)[1]))
    return done, {"missing_rois": empty, "empty_rois": empty_files}


def _replace_output(out: Path, bundle, loaded, errors, opts: dict, info: dict, *, batch: int, seed: int,
                    progress: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """``--force`` into a non-empty ``out``: predict into a new folder beside it, add the files of ``out`` that
    this run did not write (:func:`mddose.utils.fs.carry_over`: other patients', and those of a patient that
    failed now), then swap it in (:func:`mddose.utils.fs.atomic_dir`). A run that fails, predicts nothing or is
    killed leaves ``out`` as it was; the carried-over files are listed as ``kept`` in ``predict.json``."""
    from mddose.utils.fs import atomic_dir, carry_over, clean_stale_temps

    for d in (out, out / "uncertainty"):
        clean_stale_temps(d)
    try:
        with atomic_dir(out, force=True) as tmp:
            done, rois = _predict_all(bundle, loaded, errors, opts, tmp, info["fmt"], batch=batch, seed=seed,
                                      progress=progress)
            _refuse_nothing(done, errors, info["input_path"])
            kept = [k for k in carry_over(out, tmp) if k != "predict.json"]
            if kept:
                log.info("%s: kept %d file(s) of its previous contents that this run did not write (listed in "
                         "predict.json)", out, len(kept))
            _write_run_info(tmp, **info, patients=done, errors=errors, **rois, kept=kept)
    except OSError as exc:
        from mddose.utils.fs import describe_error
        raise MddoseError(f"cannot write the output beside it ({describe_error(exc)})", out) from None
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
