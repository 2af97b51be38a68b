"""The one reader of prediction folders, shared by ``mddose evaluate``, ``compare`` and ``report``.

A prediction folder ``PRED`` holds one predicted dose per patient, in any format ``mddose predict`` writes:

* ``PRED/<id>.csv`` — OpenKBP prediction format (header ``,data``, rows ``flatindex,Gy``; ``--format openkbp``);
* ``PRED/<id>.nii.gz`` or ``PRED/<id>.nii`` — NIfTI on the patient's grid (``--format nifti``);
* ``PRED/<id>/RTDOSE.dcm`` — a DICOM RTDOSE, resampled onto the patient's CT grid (``--format dicom``);

and also ``PRED/<id>.npy`` (a (Z, Y, X) float array in Gy) and ``PRED/<id>/dose.{nii.gz,nii,csv,npy}``.
Ignored: the sub-folders ``uncertainty/``, ``evaluation/``, ``figures/`` and ``std/``, ``predict.json`` and
any other non-volume file, hidden files (temporary files of atomic writes), and CSV tables whose header is
not a dose header (``per_patient.csv``, ``comparison.csv``, ...).

Problems are reported per patient, never silently resolved: two prediction files for one id
(``pt_1.csv`` and ``pt_1.nii.gz``), a file named after a patient with an unsupported suffix
(``pt_1.txt``), a special file (FIFO, device) or a broken link named like a prediction.

Uncertainty maps (standard deviation in Gy, written by ``mddose predict --samples N``) live in
``PRED/uncertainty/<id>.<suffix>`` (:func:`find_uncertainty`). Every volume is read by :func:`read_volume`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mddose.data.formats.common import list_dir, regular_file
from mddose.data.patient import Patient
from mddose.errors import MddoseError

#: Suffixes of prediction files, longest first.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".csv", ".npy")
#: File names inside ``PRED/<id>/`` that hold the patient's prediction, in order of preference.
NESTED_NAMES = ("RTDOSE.dcm", "dose.nii.gz", "dose.nii", "dose.csv", "dose.npy")
#: Sub-folders of a prediction folder that never hold predictions.
NOT_PREDICTION_DIRS = frozenset({"uncertainty", "evaluation", "figures", "std"})
#: What the folder may hold, for messages.
EXPECTED = "<id>.csv, <id>.nii.gz, <id>.nii, <id>.npy or <id>/RTDOSE.dcm as written by `mddose predict`"


def natural_key(text: str) -> list:
    """Sort key putting ``pt_2`` before ``pt_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def split_suffix(name: str) -> tuple[str, str] | None:
    """``("pt_1", ".nii.gz")`` for ``"pt_1.nii.gz"``; None if ``name`` has no volume suffix."""
    for suf in VOLUME_SUFFIXES:
        if name.lower().endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)], suf
    return None


@dataclass
class PredictionFolder:
    """What :func:`find_predictions` found in a prediction folder.

    Attributes:
        root: the folder.
        files: patient id → its one prediction file (natural order of ids).
        conflicts: patient id → the several files that claim it (none of them is used).
        others: name stem → one-line message for entries that look like a prediction but cannot be one
            (unsupported suffix, special file, broken link); a problem only when the stem is a patient id.
    """

    root: Path
    files: dict[str, Path] = field(default_factory=dict)
    conflicts: dict[str, list[Path]] = field(default_factory=dict)
    others: dict[str, str] = field(default_factory=dict)

    def problems(self, ids: Iterable[str]) -> dict[str, str]:
        """Patient id → one-line message, for the ``ids`` whose prediction is ambiguous or unreadable."""
        out: dict[str, str] = {}
        for pid in ids:
            if pid in self.conflicts:
                names = ", ".join(p.relative_to(self.root).as_posix() for p in self.conflicts[pid])
                out[pid] = str(MddoseError(f"several predictions for patient {pid!r} ({names}); keep one",
                                           self.root))
            elif pid not in self.files and pid in self.others:
                out[pid] = self.others[pid]
        return out

    def newest_mtime(self) -> float:
        """Modification time of the newest prediction file (0 if none can be read)."""
        times = []
        for p in self.files.values():
            try:
                times.append(p.stat().st_mtime)
            except OSError:
                pass
        return max(times, default=0.0)


def _entry_problem(path: Path) -> str | None:
    """Why ``path`` (named like a prediction) cannot be read as one (a one-line message naming it: broken
    link, FIFO, device, unreadable); None for a readable regular file. Never opens the file."""
    try:
        regular_file(path, "prediction file")
    except MddoseError as exc:
        return str(exc)
    return None


def _other_table(path: Path) -> bool:
    """True for a CSV text file whose first line is a header other than a dose header (``,data``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.readline(4096)
    except OSError:
        return False  # the reader will say why
    if b"\0" in head:
        return False
    try:
        line = head.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False
    fields = [f.strip().lower() for f in line.split(",")]
    if not line or (len(fields) == 2 and (fields[1] == "data" or fields[0] == "" or fields[0].isdigit())):
        return False
    return True


def find_predictions(root: str | os.PathLike) -> PredictionFolder:
    """Scan a prediction folder (layout in the module docstring).

    Raises:
        MddoseError if ``root`` is not a readable directory or holds no prediction at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise MddoseError("no such prediction directory" if not root.exists() else "not a directory", root)
    entries = list_dir(root)
    found = PredictionFolder(root)
    claims: dict[str, list[Path]] = {}
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if p.name in NOT_PREDICTION_DIRS:
                continue
            inner = [p / n for n in NESTED_NAMES if (p / n).exists() or (p / n).is_symlink()]
            if inner:
                claims.setdefault(p.name, []).append(inner[0])
            else:
                found.others.setdefault(p.name, str(MddoseError(
                    f"folder without a prediction file ({', '.join(NESTED_NAMES)})", p)))
            continue
        split = split_suffix(p.name)
        problem = _entry_problem(p)
        if split is None:
            stem = p.name.split(".")[0]
            found.others.setdefault(stem, problem or str(MddoseError(f"unsupported prediction file (expected "
                                                                     f"{EXPECTED})", p)))
            continue
        if problem is not None:
            found.others.setdefault(split[0], problem)
            continue
        if split[1] == ".csv" and _other_table(p):
            continue
        claims.setdefault(split[0], []).append(p)
    for pid in sorted(claims, key=natural_key):
        paths = claims[pid]
        if len(paths) == 1:
            found.files[pid] = paths[0]
        else:
            found.conflicts[pid] = paths
    if not found.files and not found.conflicts:
        raise MddoseError(f"no predictions found (expected {EXPECTED})", root)
    return found


def find_uncertainty(root: str | os.PathLike, patient_id: str) -> Path | None:
    """The uncertainty map (std, Gy) of one patient: ``root/uncertainty/<id>.<suffix>`` (as ``mddose predict``
    writes it), also ``<id>_std``/``<id>_uncertainty``/``<id>-std`` names, ``std/`` or ``uncertainty/<id>/std.*``;
    None if there is none."""
    root = Path(root)
    plain = [f"{patient_id}{s}" for s in VOLUME_SUFFIXES]
    tagged = [f"{patient_id}{tag}{s}" for tag in ("_std", "_uncertainty", "-std") for s in VOLUME_SUFFIXES]
    nested = [f"{patient_id}/std{s}" for s in VOLUME_SUFFIXES]
    for base in (root / "uncertainty", root / "std"):
        for n in plain + tagged + nested:
            if (base / n).is_file():
                return base / n
    for n in tagged:
        if (root / n).is_file():
            return root / n
    return None


def match_patients(folder: PredictionFolder, patients: Sequence[Patient]
                   ) -> tuple[list[tuple[Patient, Path]], list[str], dict[str, str]]:
    """Pair reference patients with their predictions.

    Returns:
        ``(pairs, missing, refused)``: ``(patient, prediction file)`` in the patients' order; ids of the
        patients without a prediction; id → one-line message for the patients refused — an ambiguous or
        unreadable prediction (:meth:`PredictionFolder.problems`) or an id shared by several reference
        patients (none of them is used: which prediction belongs to which cannot be told).
    """
    where: dict[str, list[str]] = {}
    for p in patients:
        where.setdefault(p.id, []).append(str(p.meta.get("source", "?")))
    refused = folder.problems(where)
    refused.update({pid: f"several reference patients have the id {pid!r} ({', '.join(srcs)}); none is used"
                    for pid, srcs in where.items() if len(srcs) > 1})
    pairs, missing = [], []
    for p in patients:
        if p.id in refused:
            continue
        if p.id in folder.files:
            pairs.append((p, folder.files[p.id]))
        else:
            missing.append(p.id)
    return pairs, missing, refused


# ---------------------------------------------------------------------------------------------- reading
def read_volume(path: str | os.PathLike, patient: Patient) -> np.ndarray:
    """Read a (Z, Y, X) Gy volume (a predicted dose or its std) on ``patient``'s grid.

    OpenKBP CSV, NIfTI, ``.npy`` and RTDOSE (``.dcm``, resampled onto the patient's grid) files. An OpenKBP
    CSV read against an OpenKBP reference patient is returned in float64 (bit-exact OpenKBP scores, see
    :func:`reference_dose`); everything else in float32.

    Raises:
        MddoseError naming the file: unreadable or unsupported file, wrong grid or voxel size, NaN,
        infinite or negative values.
    """
    path = regular_file(path, "prediction file")
    split = split_suffix(path.name)
    suffix = split[1] if split else path.suffix.lower()
    shape = tuple(patient.shape)
    if suffix == ".csv":
        arr = _read_csv(path, shape, exact=patient.meta.get("format") == "openkbp")
    elif suffix in (".nii", ".nii.gz"):
        arr = _read_nifti(path, patient)
    elif suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise MddoseError(f"cannot read .npy volume ({exc})", path) from None
        if not (isinstance(arr, np.ndarray) and arr.dtype.kind in "fiub"):
            raise MddoseError(f"a .npy volume must hold numbers, got {getattr(arr, 'dtype', type(arr))}", path)
    elif suffix == ".dcm":
        from mddose.data.formats.dicom.dose import read_rtdose, resample_dose
        from mddose.data.formats.dicom.geometry import Grid

        arr = resample_dose(read_rtdose(path), Grid.of(patient))
    else:
        raise MddoseError(f"unsupported prediction file (expected {EXPECTED})", path)
    if arr.dtype != np.float64:
        arr = np.asarray(arr, dtype=np.float32)
    if arr.shape != shape:
        raise MddoseError(f"prediction grid {arr.shape} differs from the reference grid {shape}", path)
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise MddoseError(f"volume contains {bad} NaN or infinite values", path)
    if arr.size and float(arr.min()) < 0:
        raise MddoseError(f"volume contains negative doses (min {float(arr.min()):g} Gy)", path)
    return arr


def _check_text(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if b"\0" in head:
        raise MddoseError("not a CSV text file (binary content)", path)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a multi-byte character cut at the block's end
            raise MddoseError("not a CSV text file (not UTF-8 text)", path) from None


def _read_csv(path: Path, shape: tuple[int, int, int], exact: bool) -> np.ndarray:
    """(Z, Y, X) Gy from an OpenKBP dose CSV; float64 when ``exact`` (the file's digits as written)."""
    from mddose.data.formats import openkbp as okbp

    _check_text(path)
    if not exact:
        return okbp.read_dose_csv(path, shape)
    fshape = okbp.file_shape(shape)
    n = int(np.prod(fshape))
    idx, vals = okbp.read_sparse_csv_fast(path, n, "dose")
    out = np.zeros(n, dtype=np.float64)
    out[okbp.file_to_patient_index(idx, fshape)] = vals
    return out.reshape(shape)


def _read_nifti(path: Path, patient: Patient) -> np.ndarray:
    from mddose.data.formats.nifti import read_nifti_array

    arr, spacing, _origin, _direction = read_nifti_array(path)
    arr = np.asarray(arr)
    if arr.shape == tuple(patient.shape) and not np.allclose(spacing, patient.spacing, rtol=1e-3):
        raise MddoseError(f"prediction voxel size {tuple(spacing)} mm differs from the reference "
                          f"{patient.spacing} mm", path)
    return arr


def reference_dose(patient: Patient, prediction: np.ndarray) -> np.ndarray:
    """The reference dose to score ``prediction`` against.

    For a float64 prediction (an OpenKBP CSV, see :func:`read_volume`) of an OpenKBP patient read from disk:
    the patient's ``dose.csv`` re-read in float64, so that the scores equal the official evaluator's to
    ~1e-15 (the float32 contract dose would leave them ~5e-8 relative off, the rounding of float32).
    Otherwise ``patient.dose`` (float32).

    Never falls back silently: when that ``dose.csv`` is gone, or holds another dose than the patient's
    (its float32 rounding differs from ``patient.dose``: the patient's source path no longer leads to the
    file it was read from), a one-line MddoseError naming the file is raised.
    """
    src = patient.meta.get("source")
    if prediction.dtype != np.float64 or patient.meta.get("format") != "openkbp" or not src \
            or patient.dose is None:
        return patient.dose
    path = Path(src) / "dose.csv"
    if not path.is_file():
        raise MddoseError(f"patient {patient.id}: cannot re-read the reference dose in float64 for exact OpenKBP "
                          "scores (no such file)", path)
    exact = _read_csv(path, tuple(patient.shape), exact=True)
    if not np.array_equal(exact.astype(np.float32), patient.dose):
        raise MddoseError(f"patient {patient.id}: this dose file is not the one the patient was read from "
                          "(its float32 rounding differs from the patient's dose)", path)
    return exact
