"""Finding and opening the DICOM files of a patient folder.

A file counts as DICOM when it has the ``DICM`` magic (at byte 128) or a ``.dcm`` / ``.dicom`` / ``.ima``
name. Such a file that can't be parsed, or that has no Modality (a truncated header), is a one-line error
naming it — never silently skipped, because a skipped RTSTRUCT would make a patient without ROIs and a
skipped CT slice an error about its neighbour. Other files (a README, ...) are ignored and listed in
the scan's ``ignored``. The scan opens only regular files: a FIFO, a socket, a broken symbolic link or
an unreadable file or folder below the patient folder is a one-line error naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mddose.data.formats.common import regular_file
from mddose.errors import MddoseError

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def has_dicom_magic(path: Path) -> bool:
    """True if regular file ``path`` has the ``DICM`` marker after its 128-byte preamble (False on OSError)."""
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_file(path: Path) -> bool:
    """True if ``path`` has a DICOM suffix or the ``DICM`` magic."""
    return path.suffix.lower() in DICOM_SUFFIXES or has_dicom_magic(path)


def is_dicom_dir(path: str | os.PathLike, recursive: bool = False) -> bool:
    """True if directory ``path`` directly holds a DICOM file (``DICM`` magic or a .dcm/.dicom/.ima name).

    With ``recursive`` sub-directories are searched too (a directory of patient directories would then
    count as one DICOM directory, which is why it is off by default). Never opens a non-regular file.
    """
    p = Path(path)
    if not p.is_dir():
        return False
    files = p.rglob("*") if recursive else p.iterdir()
    return any(f.is_file() and not f.name.startswith(".") and is_dicom_file(f) for f in files)


def read_dataset(path: Path, headers_only: bool):
    """pydicom Dataset of regular file ``path``, or None if it is not DICOM (no magic, no DICOM suffix).

    Raises a one-line MddoseError naming ``path`` for a DICOM file that can't be read or parsed, or
    that has no Modality (truncated, or random bytes with a ``.dcm`` name).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    claims = is_dicom_file(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=headers_only)
    except InvalidDicomError:
        if not claims:
            return None
        try:  # files written without the 128-byte preamble / file meta
            ds = pydicom.dcmread(path, stop_before_pixels=headers_only, force=True)
        except Exception as exc:  # noqa: BLE001 - anything pydicom raises means "unreadable"
            raise MddoseError(f"unreadable DICOM file ({exc.__class__.__name__}: {exc})", path) from None
        if "SOPClassUID" not in ds and "Modality" not in ds:
            raise MddoseError("not a DICOM file (no DICM header, no SOPClassUID or Modality): corrupt?", path)
    except PermissionError:
        raise MddoseError("cannot read DICOM file (permission denied)", path) from None
    except Exception as exc:  # noqa: BLE001
        if claims:
            raise MddoseError(f"unreadable DICOM file ({exc.__class__.__name__}: {exc})", path) from None
        return None
    if not str(ds.get("Modality", "")).strip():
        raise MddoseError("DICOM file without Modality (truncated?)", path)
    return ds


@dataclass
class Scan:
    """The DICOM files below a folder: ``found`` Modality → [(path, header dataset)] (sorted by path),
    ``ignored`` the regular files that are not DICOM."""

    found: dict[str, list[tuple[Path, object]]] = field(default_factory=dict)
    ignored: list[Path] = field(default_factory=list)


def _raise_walk_error(exc: OSError) -> None:
    what = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
    raise MddoseError(f"cannot read directory ({what})", exc.filename)


def scan(directory: Path) -> Scan:
    """Read the header of every file below ``directory`` (recursive; hidden entries and DICOMDIR skipped)."""
    out = Scan()
    for dirpath, dirnames, filenames in os.walk(directory, onerror=_raise_walk_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            f = regular_file(Path(dirpath, name), "file in a DICOM folder")
            ds = read_dataset(f, headers_only=True)
            if ds is None:
                out.ignored.append(f)
            else:
                out.found.setdefault(str(ds.get("Modality", "")).upper(), []).append((f, ds))
    return out
