"""Format-agnostic patient I/O: detect the format, load (through the cache), save atomically.

Formats: ``"openkbp"`` (:mod:`mddose.data.openkbp`), ``"nifti"`` (:mod:`mddose.data.nifti`) and
``"dicom"`` (:mod:`mddose.data.dicom`, imported lazily).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mddose.data.patient import Patient
from mddose.errors import MddoseError
from mddose.utils.fs import atomic_dir
from mddose.utils.log import logger

FORMATS = ("openkbp", "nifti", "dicom")


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise MddoseError(f"unknown patient format {fmt!r} (expected one of {', '.join(FORMATS)})")
    return fmt


def _is_dicom(path: Path) -> bool:
    try:
        from mddose.data.dicom import is_dicom_dir
    except ImportError:
        return False
    try:
        return bool(is_dicom_dir(path))
    except (OSError, ValueError):
        return False


def _detect_simple(path: Path) -> str | None:
    if (path / "ct.csv").is_file():
        return "openkbp"
    if (path / "ct.nii.gz").is_file() or (path / "ct.nii").is_file():
        return "nifti"
    return None


def detect_format(path: str | os.PathLike) -> str:
    """``"openkbp"`` (has ct.csv), ``"nifti"`` (has ct.nii.gz) or ``"dicom"`` for a patient directory."""
    path = Path(path)
    if not path.exists():
        raise MddoseError("no such file or directory", path)
    if not path.is_dir():
        raise MddoseError("a patient must be a directory", path)
    fmt = _detect_simple(path)
    if fmt is None and _is_dicom(path):
        fmt = "dicom"
    if fmt is None:
        raise MddoseError("not a patient directory (no ct.csv, ct.nii.gz or DICOM files)", path)
    return fmt


#: format → (module, reader function, writer function); modules are imported on first use.
_FORMATS: dict[str, tuple[str, str, str]] = {
    "openkbp": ("mddose.data.openkbp", "read_openkbp_patient", "write_openkbp_patient"),
    "nifti": ("mddose.data.nifti", "read_nifti_patient", "write_nifti_patient"),
    "dicom": ("mddose.data.dicom", "read_dicom_patient", "write_dicom_patient"),
}


def _format_function(fmt: str, which: int):
    import importlib

    module, *names = _FORMATS[fmt]
    try:
        return getattr(importlib.import_module(module), names[which])
    except ImportError as exc:
        raise MddoseError(f"{fmt} support is not available ({exc})") from None


def _reader(fmt: str):
    return _format_function(fmt, 0)


def _writer(fmt: str):
    return _format_function(fmt, 1)


def load_patient(path: str | os.PathLike, format: str | None = None, *, cache: bool = True) -> Patient:
    """Read one patient directory (format detected unless given), through the cache by default."""
    path = Path(path)
    fmt = detect_format(path) if format is None else _check_format(format)
    if not path.is_dir():
        raise MddoseError("a patient must be a directory", path)
    reader = _reader(fmt)
    if not cache:
        return reader(path)
    from mddose.data.cache import cached_load
    return cached_load(path, fmt, reader)


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def patient_dirs(path: str | os.PathLike, max_depth: int = 3) -> list[Path]:
    """``[path]`` if ``path`` is a patient directory, else the patient directories below it.

    An OpenKBP/NIfTI patient is recognised first; a directory whose sub-directories (or their
    sub-directories, e.g. ``openkbp/train-pats/pt_1``, up to ``max_depth`` levels) are patients is a
    collection; otherwise a DICOM directory is one patient. Sub-directories of a collection that are not
    recognisable patients are returned too (so that loading them reports why). Natural sort order.
    """
    path = Path(path)
    if not path.is_dir():
        raise MddoseError("no such directory" if not path.exists() else "not a directory", path)
    if _detect_simple(path):
        return [path]
    subs = sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural_key)
    found = [s for s in subs if _detect_simple(s)]
    if not found and _is_dicom(path):
        return [path]
    if not subs:
        raise MddoseError("no patient directories found", path)
    if found or max_depth <= 1:
        return subs
    nested: list[Path] = []
    for s in subs:
        try:
            inner = patient_dirs(s, max_depth - 1)
        except MddoseError:
            continue
        if inner != [s] or _is_dicom(s):
            nested += inner
    return nested or subs


def _log_bad(path: Path, exc: Exception) -> None:
    msg = str(exc)
    logger.warning("skipping patient: %s", msg if str(path) in msg else f"{path}: {msg}")


def load_patients(path: str | os.PathLike, format: str | None = None, *, cache: bool = True,
                  progress: bool = False) -> tuple[list[Patient], list[tuple[str, str]]]:
    """Load a patient directory or a directory of patient directories.

    Returns ``(patients, bad)`` where ``bad`` lists ``(path, message)`` of the patients that could not be
    read (each also logged as a warning); the rest are loaded.
    """
    if format is not None:
        _check_format(format)
    dirs = patient_dirs(path)
    it = dirs
    if progress:
        from tqdm import tqdm
        it = tqdm(dirs, desc="loading patients", unit="pt")
    patients: list[Patient] = []
    bad: list[tuple[str, str]] = []
    for d in it:
        try:
            patients.append(load_patient(d, format, cache=cache))
        except (MddoseError, OSError) as exc:
            _log_bad(d, exc)
            bad.append((str(d), str(exc)))
    return patients, bad


def save_patient(patient: Patient, path: str | os.PathLike, format: str, *, force: bool = False) -> Path:
    """Write ``patient`` as directory ``path`` in ``format``, atomically; refuses to overwrite without force."""
    writer = _writer(_check_format(format))
    path = Path(path)
    with atomic_dir(path, force=force) as tmp:
        writer(patient, tmp)
    return path


# ---------------------------------------------------------------------------------------- inspect / convert
def find_problems(patient: Patient) -> list[str]:
    """Human-readable problems of a patient: empty ROIs, no target, dose outside the possible-dose mask,
    overlapping targets, possible-dose mask not covering a target."""
    import numpy as np

    problems = [f"ROI {n!r} is empty" for n, m in patient.masks.items() if not m.any()]
    if not patient.targets:
        problems.append("no target ROI (none of " + ", ".join(patient.prescriptions) + ")")
    targets = patient.targets
    for i, a in enumerate(targets):
        for b in targets[i + 1:]:
            n = int(np.count_nonzero(patient.masks[a] & patient.masks[b]))
            if n:
                problems.append(f"targets {a} and {b} overlap in {n} voxels")
    pdm = patient.possible_dose_mask
    if pdm is not None:
        if patient.dose is not None:
            outside = (patient.dose > 0) & ~pdm
            n = int(np.count_nonzero(outside))
            if n:
                problems.append(f"dose > 0 in {n} voxels outside the possible-dose mask "
                                f"(max {float(patient.dose[outside].max()):.3g} Gy)")
        for t in targets:
            n = int(np.count_nonzero(patient.masks[t] & ~pdm))
            if n:
                problems.append(f"target {t} has {n} voxels outside the possible-dose mask")
    return problems


def inspect_patient(patient: Patient) -> dict:
    """JSON-ready report: :meth:`Patient.summary` plus ``targets`` (prescriptions), ``format``,
    ``source``, per-ROI ``mean_dose`` and ``problems``."""
    info = patient.summary()
    info["targets"] = {t: patient.prescriptions[t] for t in patient.targets}
    info["format"] = patient.meta.get("format")
    info["source"] = patient.meta.get("source")
    if patient.dose is not None:
        for name, roi in info["rois"].items():
            m = patient.masks[name]
            roi["mean_dose"] = float(patient.dose[m].mean()) if roi["voxels"] else None
    info["problems"] = find_problems(patient)
    return info


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, *, src_format: str | None = None,
            force: bool = False, cache: bool = False,
            progress: bool = False) -> tuple[list[Path], list[tuple[str, str]]]:
    """Convert a patient directory, or a directory of patient directories, to format ``to``.

    A single patient is written as ``dst``; a collection as ``dst/<patient dir name>`` for each readable
    patient, the whole of ``dst`` built atomically. Never overwrites ``dst`` unless ``force``.
    Returns ``(written paths, bad (path, message) pairs)``; raises MddoseError if nothing was converted.
    """
    from mddose.utils.fs import check_new_output

    _check_format(to)
    _writer(to)  # fail early if the writer is unavailable
    src, dst = Path(src), Path(dst)
    check_new_output(dst, force)
    dirs = patient_dirs(src)
    if dirs == [src]:
        return [save_patient(load_patient(src, src_format, cache=cache), dst, to, force=force)], []
    written: list[Path] = []
    bad: list[tuple[str, str]] = []
    it = dirs
    if progress:
        from tqdm import tqdm
        it = tqdm(dirs, desc=f"converting to {to}", unit="pt")
    with atomic_dir(dst, force=force) as tmp:
        for d in it:
            try:
                rel = d.relative_to(src)
                save_patient(load_patient(d, src_format, cache=cache), tmp / rel, to)
                written.append(dst / rel)
            except (MddoseError, OSError) as exc:
                _log_bad(d, exc)
                bad.append((str(d), str(exc)))
        if not written:
            raise MddoseError(f"no patient could be converted ({len(bad)} failed)", src)
    return written, bad
