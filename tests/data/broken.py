"""Builders of broken patients (issue 11): one function per failure kind, plus good ones.

Every builder is ``builder(root, name=<kind>) -> Path``: it writes a small synthetic patient (a phantom of
:data:`SIZE`, id = folder name) into ``root / name``, breaks it in one way and returns the folder. The
tables group them by what a reader must do with them:

* :data:`UNREADABLE` — kind → (builder, text the one-line error must contain, usually the file at fault).
  Every batch command must name the folder in one line, never a traceback, and go on with the rest.
  The permission kinds are left out when running as root (root reads any file).
* :data:`PROBLEMS` — readable patients that ``mddose data inspect`` must list a problem for:
  kind → (builder, text of the problem).
* :data:`UNSAFE_IDS` — readable patients whose stored id is not a safe file name (``../../escaped``, an
  absolute path): readers rename them (:func:`mddose.data.patient.safe_id`); nothing may be written
  outside an output folder.
* :func:`duplicate_ids` — two folders whose patients have the same id (``predict``/``evaluate`` refuse both).

:func:`build_collection` writes all of them (or a chosen subset) and good patients into one directory.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mddose.data.io import save_patient
from mddose.data.patient import Patient, safe_id
from mddose.data.phantom import make_phantom

#: Transverse size of every patient written here (grid (16, 32, 32)).
SIZE = 32
Builder = Callable[..., Path]
_ROOT = os.geteuid() == 0


def _random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def _phantom(name: str, seed: int) -> Patient:
    p = make_phantom(seed, SIZE)
    p.id = name
    return p


# ---------------------------------------------------------------------------------------------- good
def good(root: str | os.PathLike, name: str = "good_1", *, seed: int = 0, fmt: str = "openkbp") -> Path:
    """A readable phantom (``fmt``: openkbp, nifti or dicom) with dose and possible-dose mask, id ``name``."""
    return save_patient(_phantom(name, seed), Path(root) / name, fmt)


def _openkbp(root, name: str) -> Path:
    return good(root, name, seed=sum(map(ord, name)) % 1000)


def _dicom(root, name: str) -> Path:
    return good(root, name, seed=sum(map(ord, name)) % 1000, fmt="dicom")


def _replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _edit_sidecar(d: Path, **changes) -> None:
    side = json.loads((d / "mddose.json").read_text())
    side.update(changes)
    (d / "mddose.json").write_text(json.dumps(side))


# ---------------------------------------------------------------------------------------------- unreadable
def ct_random_bytes(root, name: str = "bad_ct_random_bytes") -> Path:
    """OpenKBP ``ct.csv`` replaced by random bytes."""
    d = _openkbp(root, name)
    (d / "ct.csv").write_bytes(_random_bytes(4000))
    return d


def ct_non_numeric(root, name: str = "bad_ct_non_numeric") -> Path:
    """OpenKBP ``ct.csv`` with a non-numeric value on line 3."""
    d = _openkbp(root, name)
    _replace_line(d / "ct.csv", 3, "17,abc")
    return d


def dose_nan(root, name: str = "bad_dose_nan") -> Path:
    """OpenKBP ``dose.csv`` with a NaN dose."""
    d = _openkbp(root, name)
    _replace_line(d / "dose.csv", 3, "100,nan")
    return d


def sidecar_malformed(root, name: str = "bad_sidecar_malformed") -> Path:
    """``mddose.json`` that is not valid JSON."""
    d = _openkbp(root, name)
    (d / "mddose.json").write_text('{"id": "x", ')
    return d


def sidecar_non_numeric(root, name: str = "bad_sidecar_non_numeric") -> Path:
    """``mddose.json`` with a non-numeric grid shape."""
    d = _openkbp(root, name)
    _edit_sidecar(d, grid_shape=["many", 32, 16])
    return d


def ct_fifo(root, name: str = "bad_ct_fifo") -> Path:
    """``ct.csv`` is a FIFO (opening it would block forever)."""
    d = _openkbp(root, name)
    (d / "ct.csv").unlink()
    os.mkfifo(d / "ct.csv")
    return d


def roi_fifo(root, name: str = "bad_roi_fifo") -> Path:
    """An ROI file ``Heart.csv`` is a FIFO."""
    d = _openkbp(root, name)
    (d / "Heart.csv").unlink()
    os.mkfifo(d / "Heart.csv")
    return d


def roi_broken_link(root, name: str = "bad_roi_broken_link") -> Path:
    """An ROI file ``Esophagus.csv`` is a symbolic link to nothing."""
    d = _openkbp(root, name)
    (d / "Esophagus.csv").unlink()
    (d / "Esophagus.csv").symlink_to(d / "gone.csv")
    return d


def patient_broken_link(root, name: str = "bad_patient_broken_link") -> Path:
    """The patient folder itself is a symbolic link to nothing."""
    link = Path(root) / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path(root) / f".{name}-gone")
    return link


def ct_unreadable(root, name: str = "bad_ct_unreadable") -> Path:
    """``ct.csv`` without read permission (no effect for root)."""
    d = _openkbp(root, name)
    (d / "ct.csv").chmod(0)
    return d


def dir_unreadable(root, name: str = "bad_dir_unreadable") -> Path:
    """The patient folder without read/search permission (no effect for root). Restore with ``chmod 0o755``
    before deleting it."""
    d = _openkbp(root, name)
    d.chmod(0)
    return d


def empty_dir(root, name: str = "bad_empty") -> Path:
    """An empty folder among the patients."""
    d = Path(root) / name
    d.mkdir(parents=True)
    return d


def nifti_garbage(root, name: str = "bad_nifti_garbage") -> Path:
    """NIfTI patient whose ``ct.nii.gz`` is random bytes."""
    d = good(root, name, seed=3, fmt="nifti")
    (d / "ct.nii.gz").write_bytes(_random_bytes(3000))
    return d


def rtstruct_random(root, name: str = "bad_rtstruct_random") -> Path:
    """DICOM patient whose ``RTSTRUCT.dcm`` is random bytes."""
    d = _dicom(root, name)
    (d / "RTSTRUCT.dcm").write_bytes(_random_bytes(5000, 1))
    return d


def rtstruct_truncated(root, name: str = "bad_rtstruct_truncated") -> Path:
    """DICOM patient whose ``RTSTRUCT.dcm`` is cut in half (pydicom reads it without complaint)."""
    d = _dicom(root, name)
    raw = (d / "RTSTRUCT.dcm").read_bytes()
    (d / "RTSTRUCT.dcm").write_bytes(raw[: len(raw) // 2])
    return d


def rtdose_negative_scaling(root, name: str = "bad_rtdose_negative_scaling") -> Path:
    """DICOM patient whose RTDOSE has a negative DoseGridScaling."""
    import pydicom

    d = _dicom(root, name)
    ds = pydicom.dcmread(d / "RTDOSE.dcm")
    ds.DoseGridScaling = -float(ds.DoseGridScaling)
    ds.save_as(d / "RTDOSE.dcm")
    return d


def ct_slice_junk(root, name: str = "bad_ct_slice_junk") -> Path:
    """DICOM patient whose CT slice ``CT.0005.dcm`` is random bytes (the error must name it, not CT.0006)."""
    d = _dicom(root, name)
    (d / "CT.0005.dcm").write_bytes(_random_bytes(5000, 2))
    return d


#: kind → (builder, text the one-line error contains).
UNREADABLE: dict[str, tuple[Builder, str]] = {
    "bad_ct_random_bytes": (ct_random_bytes, "ct.csv"),
    "bad_ct_non_numeric": (ct_non_numeric, "ct.csv"),
    "bad_dose_nan": (dose_nan, "dose.csv"),
    "bad_sidecar_malformed": (sidecar_malformed, "mddose.json"),
    "bad_sidecar_non_numeric": (sidecar_non_numeric, "mddose.json"),
    "bad_ct_fifo": (ct_fifo, "ct.csv"),
    "bad_roi_fifo": (roi_fifo, "Heart.csv"),
    "bad_roi_broken_link": (roi_broken_link, "Esophagus.csv"),
    "bad_patient_broken_link": (patient_broken_link, "bad_patient_broken_link"),
    "bad_empty": (empty_dir, "bad_empty"),
    "bad_nifti_garbage": (nifti_garbage, "ct.nii.gz"),
    "bad_rtstruct_random": (rtstruct_random, "RTSTRUCT.dcm"),
    "bad_rtstruct_truncated": (rtstruct_truncated, "RTSTRUCT.dcm"),
    "bad_rtdose_negative_scaling": (rtdose_negative_scaling, "RTDOSE.dcm"),
    "bad_ct_slice_junk": (ct_slice_junk, "CT.0005.dcm"),
}
if not _ROOT:  # root reads any file: these kinds are not broken for root
    UNREADABLE["bad_ct_unreadable"] = (ct_unreadable, "ct.csv")
    UNREADABLE["bad_dir_unreadable"] = (dir_unreadable, "bad_dir_unreadable")


# ---------------------------------------------------------------------------------------------- problems
def no_possible_dose_mask(root, name: str = "problem_no_possible_dose_mask") -> Path:
    """OpenKBP patient without ``possible_dose_mask.csv``."""
    d = _openkbp(root, name)
    (d / "possible_dose_mask.csv").unlink()
    return d


def duplicate_indices(root, name: str = "problem_duplicate_indices") -> Path:
    """OpenKBP ``dose.csv`` whose first data row is repeated twice at the end."""
    d = _openkbp(root, name)
    lines = (d / "dose.csv").read_text().splitlines()
    (d / "dose.csv").write_text("\n".join(lines + [lines[1], lines[1]]) + "\n")
    return d


def dose_too_high(root, name: str = "problem_dose_too_high") -> Path:
    """Patient whose dose is 4× the phantom's (maximum far above 150 Gy: wrong units)."""
    p = _phantom(name, 11)
    p.dose = p.dose * np.float32(4.0)
    return save_patient(p, Path(root) / name, "openkbp")


#: kind → (builder, text of the problem ``mddose data inspect`` lists).
PROBLEMS: dict[str, tuple[Builder, str]] = {
    "problem_no_possible_dose_mask": (no_possible_dose_mask, "no possible-dose mask"),
    "problem_duplicate_indices": (duplicate_indices, "dose.csv lists 2 voxel index(es) more than once"),
    "problem_dose_too_high": (dose_too_high, "above a plausible 150 Gy"),
}


# ---------------------------------------------------------------------------------------------- ids
def unsafe_id_relative(root, name: str = "unsafe_id_relative") -> Path:
    """OpenKBP patient whose ``mddose.json`` id is ``../../escaped``."""
    d = _openkbp(root, name)
    _edit_sidecar(d, id="../../escaped")
    return d


def unsafe_id_absolute(root, name: str = "unsafe_id_absolute") -> Path:
    """NIfTI patient whose ``patient.json`` id is an absolute path (``<root>/escaped_absolute``)."""
    d = good(root, name, seed=5, fmt="nifti")
    meta = json.loads((d / "patient.json").read_text())
    meta["id"] = str(Path(root).resolve() / "escaped_absolute")
    (d / "patient.json").write_text(json.dumps(meta))
    return d


#: kind → (builder, the safe id a reader gives it).
UNSAFE_IDS: dict[str, tuple[Builder, Callable[[Path], str]]] = {
    "unsafe_id_relative": (unsafe_id_relative, lambda root: "___.._escaped"),
    "unsafe_id_absolute": (unsafe_id_absolute, lambda root: safe_id(str(Path(root).resolve() / "escaped_absolute"))),
}


def duplicate_ids(root, names: tuple[str, str] = ("duplicate_id_a", "duplicate_id_b"),
                  pid: str = "duplicate") -> tuple[Path, Path]:
    """Two OpenKBP folders whose patients both have id ``pid``."""
    out = []
    for name in names:
        d = _openkbp(root, name)
        _edit_sidecar(d, id=pid)
        out.append(d)
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------- collection
@dataclass
class Collection:
    """What :func:`build_collection` wrote below ``root``: folders by kind."""

    root: Path
    good: list[Path] = field(default_factory=list)
    unreadable: dict[str, Path] = field(default_factory=dict)
    problems: dict[str, Path] = field(default_factory=dict)
    unsafe: dict[str, Path] = field(default_factory=dict)
    duplicates: tuple[Path, ...] = ()

    def restore_permissions(self) -> None:
        """Make every folder and file below ``root`` readable again (so that it can be deleted)."""
        for d in self.unreadable.values():
            if d.exists() and not d.is_symlink():
                d.chmod(0o755)
                for f in d.iterdir():
                    if f.is_file() and not f.is_symlink():
                        f.chmod(0o644)


def build_collection(root: str | os.PathLike, *, n_good: int = 2, unreadable: bool | list[str] = True,
                     problems: bool | list[str] = True, unsafe: bool | list[str] = True,
                     duplicates: bool = True) -> Collection:
    """Write ``n_good`` good phantoms (``good_1`` …) and the chosen broken kinds (True: all of a table,
    or a list of kind names) as sibling folders of ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = Collection(root, good=[good(root, f"good_{i}", seed=100 + i) for i in range(1, n_good + 1)])

    def chosen(table: dict, which) -> list[str]:
        return list(table) if which is True else list(which or [])

    out.unreadable = {k: UNREADABLE[k][0](root, k) for k in chosen(UNREADABLE, unreadable)}
    out.problems = {k: PROBLEMS[k][0](root, k) for k in chosen(PROBLEMS, problems)}
    out.unsafe = {k: UNSAFE_IDS[k][0](root, k) for k in chosen(UNSAFE_IDS, unsafe)}
    if duplicates:
        out.duplicates = duplicate_ids(root)
    return out


def remove_collection(c: Collection) -> None:
    """Delete a collection (restoring permissions first)."""
    c.restore_permissions()
    shutil.rmtree(c.root, ignore_errors=True)
