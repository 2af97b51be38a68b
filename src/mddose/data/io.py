"""Format-agnostic patient I/O: detect the format, load (through the cache), load a batch, save atomically.

Formats: ``"openkbp"`` (:mod:`mddose.data.formats.openkbp`), ``"nifti"`` (:mod:`mddose.data.formats.nifti`)
and ``"dicom"`` (:mod:`mddose.data.formats.dicom`); their modules are imported on first use.

**Batches** (:func:`load_patients`, :func:`convert`): whatever goes wrong with one patient — a malformed
file, an unreadable file or folder, a FIFO, a broken link, an unexpected exception — is reported as one
``(path, message)`` pair naming the patient's folder, logged as a warning, and the rest go on. In
:func:`load_patients` two patients with the same id are both refused (``unique_ids``, the default: outputs
named after the id would overwrite each other); each report names the other folder. :func:`convert`
names its outputs after the folders, so it keeps them.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

from mddose.data.cache import cached_load
from mddose.data.formats.common import list_dir
from mddose.data.formats.dicom.files import is_dicom_dir
from mddose.data.patient import Patient
from mddose.errors import MddoseError
from mddose.utils.fs import atomic_dir, check_new_output, describe_error
from mddose.utils.log import logger

FORMATS = ("openkbp", "nifti", "dicom")

#: format → (reader module, reader function, writer module, writer function); imported on first use.
_FORMATS: dict[str, tuple[str, str, str, str]] = {
    "openkbp": ("mddose.data.formats.openkbp", "read_openkbp_patient",
                "mddose.data.formats.openkbp", "write_openkbp_patient"),
    "nifti": ("mddose.data.formats.nifti", "read_nifti_patient", "mddose.data.formats.nifti", "write_nifti_patient"),
    "dicom": ("mddose.data.formats.dicom.read", "read_dicom_patient",
              "mddose.data.formats.dicom.write", "write_dicom_patient"),
}


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise MddoseError(f"unknown patient format {fmt!r} (expected one of {', '.join(FORMATS)})")
    return fmt


def _reader(fmt: str):
    module, name = _FORMATS[fmt][:2]
    return getattr(importlib.import_module(module), name)


def _writer(fmt: str):
    module, name = _FORMATS[fmt][2:]
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------------------------------- detection
def _entry_exists(path: Path) -> bool:
    """True if ``path`` is any directory entry (a file, a FIFO, a directory, a broken link, ...)."""
    try:
        return os.path.lexists(path)
    except OSError:
        return False


def _is_dicom(path: Path) -> bool:
    try:
        return bool(is_dicom_dir(path))
    except (OSError, ValueError):
        return False


def _detect_simple(path: Path) -> str | None:
    """``"openkbp"`` / ``"nifti"`` when ``ct.csv`` / ``ct.nii(.gz)`` is there (even as a FIFO, a directory or a
    broken link, so that reading it reports what is wrong), else None; never raises."""
    if _entry_exists(path / "ct.csv"):
        return "openkbp"
    if _entry_exists(path / "ct.nii.gz") or _entry_exists(path / "ct.nii"):
        return "nifti"
    return None


def _check_dir(path: Path) -> None:
    """Raise a one-line MddoseError unless ``path`` is a readable directory."""
    if not path.exists():
        raise MddoseError("broken symbolic link" if path.is_symlink() else "no such file or directory", path)
    if not path.is_dir():
        raise MddoseError("a patient must be a directory", path)
    list_dir(path)  # unreadable → one line


def detect_format(path: str | os.PathLike) -> str:
    """``"openkbp"`` (has ct.csv), ``"nifti"`` (has ct.nii.gz) or ``"dicom"`` for a patient directory."""
    path = Path(path)
    _check_dir(path)
    fmt = _detect_simple(path)
    if fmt is None and _is_dicom(path):
        fmt = "dicom"
    if fmt is None:
        raise MddoseError("not a patient directory (no ct.csv, ct.nii.gz or DICOM files)", path)
    return fmt


# ---------------------------------------------------------------------------------------- loading
def load_patient(path: str | os.PathLike, format: str | None = None, *, cache: bool = True) -> Patient:
    """Read one patient directory (format detected unless given), through the cache by default.

    Every failure is a one-line :class:`MddoseError`: the reader's own (naming the file), an ``OSError``
    (naming its file), anything else (naming ``path`` and the exception type).
    """
    path = Path(path)
    try:
        if format is None:
            fmt = detect_format(path)
        else:
            fmt = _check_format(format)
            _check_dir(path)
        reader = _reader(fmt)
        return cached_load(path, fmt, reader) if cache else reader(path)
    except MddoseError:
        raise
    except OSError as exc:
        msg = describe_error(exc)
        raise MddoseError(msg if exc.filename is not None else f"{path}: {msg}") from None
    except Exception as exc:  # noqa: BLE001 - any failure of one patient is that patient's error
        raise MddoseError(f"cannot read patient ({describe_error(exc)})", path) from None


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _candidates(path: Path) -> list[Path]:
    """Sub-directories of ``path`` (and broken links, which loading then reports), hidden ones skipped."""
    out = []
    for p in list_dir(path):
        if p.name.startswith("."):
            continue
        try:
            if p.is_dir() or (p.is_symlink() and not p.exists()):
                out.append(p)
        except OSError:
            out.append(p)
    return sorted(out, key=_natural_key)


def patient_dirs(path: str | os.PathLike, max_depth: int = 3) -> list[Path]:
    """``[path]`` if ``path`` is a patient directory, else the patient directories below it.

    An OpenKBP/NIfTI patient is recognised first; a directory whose sub-directories (or their
    sub-directories, e.g. ``openkbp/train-pats/pt_1``, up to ``max_depth`` levels) are patients is a
    collection; otherwise a DICOM directory is one patient. Sub-directories of a collection that are not
    recognisable patients (unreadable ones, broken links) are returned too, so that loading them reports
    why. Natural sort order.
    """
    path = Path(path)
    if not path.is_dir():
        raise MddoseError("no such directory" if not path.exists() else "not a directory", path)
    if _detect_simple(path):
        return [path]
    subs = _candidates(path)
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
        except (MddoseError, OSError):
            continue
        if inner != [s] or _is_dicom(s):
            nested += inner
    return nested or subs


def _failure(path: Path, exc: BaseException) -> tuple[str, str]:
    """``(path, one-line message naming path)`` for a failed patient, logged as a warning."""
    msg = describe_error(exc)
    if str(path) not in msg:
        msg = f"{path}: {msg}"
    logger.warning("skipping patient: %s", msg)
    return str(path), msg


def duplicate_ids(items: list[tuple[Path, str]]) -> dict[Path, str]:
    """Folder → one-line message for every folder of ``items`` (folder, patient id) whose id is shared."""
    by_id: dict[str, list[Path]] = {}
    for d, pid in items:
        by_id.setdefault(pid, []).append(d)
    out = {}
    for pid, dirs in by_id.items():
        if len(dirs) > 1:
            for d in dirs:
                others = ", ".join(str(o) for o in dirs if o != d)
                out[d] = (f"{d}: patient id {pid!r} is also the id of {others}; ids must be unique in a batch "
                          "(all of them refused)")
    return out


def load_patients(path: str | os.PathLike, format: str | None = None, *, cache: bool = True,
                  progress: bool = False, unique_ids: bool = True) -> tuple[list[Patient], list[tuple[str, str]]]:
    """Load a patient directory or a directory of patient directories.

    Returns ``(patients, bad)`` where ``bad`` lists ``(path, message)`` of the patients that could not be
    read, whatever the exception, and (``unique_ids``) of every patient whose id another patient of the
    batch has; each message names the path and is also logged as a warning. The rest are loaded, in
    folder order.
    """
    if format is not None:
        _check_format(format)
    dirs = patient_dirs(path)
    it = dirs
    if progress:
        from tqdm import tqdm
        it = tqdm(dirs, desc="loading patients", unit="pt")
    loaded: list[tuple[Path, Patient]] = []
    bad: dict[Path, tuple[str, str]] = {}
    for d in it:
        try:
            loaded.append((d, load_patient(d, format, cache=cache)))
        except Exception as exc:  # noqa: BLE001 - report and go on
            bad[d] = _failure(d, exc)
    for d, msg in (duplicate_ids([(d, p.id) for d, p in loaded]) if unique_ids else {}).items():
        logger.warning("skipping patient: %s", msg)
        bad[d] = (str(d), msg)
    patients = [p for d, p in loaded if d not in bad]
    return patients, [bad[d] for d in dirs if d in bad]


# ---------------------------------------------------------------------------------------- saving
def save_patient(patient: Patient, path: str | os.PathLike, format: str, *, force: bool = False) -> Path:
    """Write ``patient`` as directory ``path`` in ``format``, atomically; refuses to overwrite without force."""
    writer = _writer(_check_format(format))
    patient.validate_id()
    path = Path(path)
    try:
        with atomic_dir(path, force=force) as tmp:
            writer(patient, tmp)
    except MddoseError:
        raise
    except OSError as exc:
        raise MddoseError(f"cannot write the patient ({describe_error(exc)})", path) from None
    return path


def _keep_failed(old: Path, new: Path, failed: list[Path]) -> None:
    """Carry the previous conversion of each patient of ``failed`` (paths relative to the source) from the output
    ``old`` being replaced into the new one (``new``), one INFO line each."""
    from mddose.utils.fs import carry_over
    from mddose.utils.log import logger

    for rel in failed:
        if (old / rel).is_dir() and not (new / rel).exists() and carry_over(old / rel, new / rel):
            logger.info("%s: kept its previous conversion (this run could not convert it)", old / rel)


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, *, src_format: str | None = None,
            force: bool = False, cache: bool = False,
            progress: bool = False) -> tuple[list[Path], list[tuple[str, str]]]:
    """Convert a patient directory, or a directory of patient directories, to format ``to``.

    A single patient is written as ``dst``; a collection as ``dst/<patient dir name>`` for each readable
    patient, the whole of ``dst`` built atomically. Never overwrites ``dst`` unless ``force``; then the new ``dst``
    replaces the old one only once complete (a failed or killed run leaves it as it was). A patient that fails
    (whatever the exception) is reported and left out — with ``force``, its previous conversion in ``dst``, if
    any, is kept (:func:`_keep_failed`), so that a run never leaves less than there was.
    Returns ``(written paths, bad (path, message) pairs)``; raises MddoseError if nothing was converted.
    """
    _check_format(to)
    _writer(to)  # fail early if the writer is unavailable
    src, dst = Path(src), Path(dst)
    check_new_output(dst, force)
    dirs = patient_dirs(src)
    if dirs == [src]:
        return [save_patient(load_patient(src, src_format, cache=cache), dst, to, force=force)], []
    written: dict[Path, Path] = {}
    bad: dict[Path, tuple[str, str]] = {}
    it = dirs
    if progress:
        from tqdm import tqdm
        it = tqdm(dirs, desc=f"converting to {to}", unit="pt")
    try:
        with atomic_dir(dst, force=force) as tmp:
            for d in it:
                try:
                    rel = d.relative_to(src)
                    save_patient(load_patient(d, src_format, cache=cache), tmp / rel, to)
                    written[d] = rel
                except Exception as exc:  # noqa: BLE001 - report and go on
                    bad[d] = _failure(d, exc)
            if not written:
                raise MddoseError(f"no patient could be converted ({len(bad)} failed)", src)
            _keep_failed(dst, tmp, [d.relative_to(src) for d in bad])
    except OSError as exc:
        raise MddoseError(f"cannot write the output ({describe_error(exc)})", dst) from None
    return [dst / written[d] for d in dirs if d in written], [bad[d] for d in dirs if d in bad]
