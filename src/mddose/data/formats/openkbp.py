"""OpenKBP patient folders (sparse CSV files) ⇄ :class:`~mddose.data.patient.Patient`.

File layout (ababier/open-kbp ``provided-data``): one folder per patient with

* ``ct.csv`` — grey values (air ≈ 0, water ≈ 1000), sparse;
* ``dose.csv`` — Gy, sparse (absent for a patient to be predicted);
* ``possible_dose_mask.csv`` and one ``<ROI>.csv`` per contoured ROI — indices only;
* ``voxel_dimensions.csv`` — three spacings (mm) in the file grid's axis order.

Every sparse CSV has the header ``,data`` and rows ``flatindex,value`` (value empty for masks); the flat
index is C-order over the file grid ``(A0, A1, A2) = (128, 128, 128)``.

**Orientation** (checked on all 36 shared patients, see ``tests/data/test_openkbp.py``):

* ``A0`` increases towards **posterior** (spinal cord at larger A0 than mandible) → contract ``y``;
* ``A1`` increases towards the patient's **left** (LeftParotid at larger A1 than RightParotid) → ``x``;
* ``A2`` increases towards **inferior** (brainstem at smaller A2 than larynx/esophagus) → reversed ``z``.

``(A0, A1, A2) = (P, L, I)`` is a right-handed frame, so the ROI labels agree with a physical (not
mirrored) patient: ``patient[z, y, x] = file[y, x, A2 - 1 - z]`` and spacing ``(sz, sy, sx) = (v2, v0, v1)``.

CT is converted to HU as ``clip(value, 0, 4095) - 1000`` (the dataset's notes advise the clipping because
12- and 16-bit scans are mixed); the writer stores ``HU + 1000``. Values above 4095 (86 voxels in the
shared data) therefore come back as 3095 HU.

Non-standard extension: the writer adds ``mddose.json`` (id, prescriptions, file-grid shape, origin,
direction) so that grids other than 128³ (e.g. 64³ phantoms), custom targets and geometry survive a round
trip. OpenKBP's own tools only read ``*.csv`` and ignore it; without it the reader assumes a 128³ grid,
the OpenKBP targets, origin 0 and an identity direction. The patient id is the sidecar's ``id`` or the
folder's name, made safe by :func:`mddose.data.formats.common.reader_patient_id`.

A voxel index listed twice in one CSV is read (the last row wins) and counted in
``patient.meta["duplicate_indices"]`` (file name → number of repeated rows), which ``mddose data inspect``
reports as a problem. Only regular files are opened (a FIFO or a broken link is a one-line error).

The fast path parses with ``pandas.read_csv`` (C engine); :func:`read_sparse_csv_ref` is the plain
reference (``csv`` module) with the same signature and is also what names the bad line when the fast
path finds a problem.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np

from mddose.data.formats.common import list_dir, reader_patient_id, regular_file
from mddose.data.patient import OPENKBP_OARS, OPENKBP_TARGETS, Patient
from mddose.errors import MddoseError
from mddose.utils.config import read_json_object
from mddose.utils.log import log_once

#: The OpenKBP grid (patient order (Z, Y, X); it is a cube, so also the file order).
GRID: tuple[int, int, int] = (128, 128, 128)
#: Grey value of water; HU = clip(value, 0, CT_MAX) - CT_OFFSET.
CT_OFFSET = 1000.0
CT_MAX = 4095.0
SIDECAR = "mddose.json"
RESERVED = ("ct", "dose", "possible_dose_mask", "voxel_dimensions")
_KINDS = ("mask", "ct", "dose")


# ---------------------------------------------------------------------------------------- geometry
def file_shape(shape_zyx: tuple[int, int, int]) -> tuple[int, int, int]:
    """File-grid shape ``(A0, A1, A2) = (Y, X, Z)`` of a patient grid ``(Z, Y, X)``."""
    z, y, x = shape_zyx
    return (int(y), int(x), int(z))


def patient_shape(fshape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Patient-grid shape ``(Z, Y, X)`` of a file grid ``(A0, A1, A2)``."""
    a0, a1, a2 = fshape
    return (int(a2), int(a0), int(a1))


def to_file_order(arr: np.ndarray) -> np.ndarray:
    """(Z, Y, X) contract-order array → (A0, A1, A2) file order (contiguous copy)."""
    return np.ascontiguousarray(arr[::-1].transpose(1, 2, 0))


def file_to_patient_index(idx: np.ndarray, fshape: tuple[int, int, int]) -> np.ndarray:
    """Flat C-order indices of the file grid (N,) int64 → flat indices of the (Z, Y, X) grid (N,)."""
    a0n, a1n, a2n = fshape
    a2 = idx % a2n
    rest = idx // a2n
    a1 = rest % a1n
    a0 = rest // a1n
    return ((a2n - 1 - a2) * a0n + a0) * a1n + a1


# ---------------------------------------------------------------------------------------- parsing
def _check_parsed(path: Path, idx: np.ndarray, vals: np.ndarray | None, n: int, kind: str) -> bool:
    """True if fast-parsed columns are valid (the reference parser then isn't needed)."""
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        return False
    if kind != "mask" and vals is not None and vals.size:
        if not np.all(np.isfinite(vals)):
            return False
        if kind == "dose" and float(vals.min()) < 0:
            return False
    return True


def read_sparse_csv_fast(path: str | os.PathLike, n: int, kind: str = "mask"):
    """Parse a sparse OpenKBP CSV with pandas' C engine; same contract as :func:`read_sparse_csv_ref`."""
    import pandas as pd

    path = Path(path)
    try:
        with warnings.catch_warnings():  # a row with extra fields is a warning with index_col=False
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, header=0, names=["i", "v"], dtype={"i": np.int64, "v": np.float64},
                             engine="c", index_col=False)
        idx = df["i"].to_numpy(dtype=np.int64)
        vals = None if kind == "mask" else df["v"].to_numpy(dtype=np.float64)
        ok = _check_parsed(path, idx, vals, n, kind) and _header_ok(path)
    except (ValueError, TypeError, OverflowError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError, pd.errors.ParserWarning):
        ok = False
    if not ok:  # let the reference parser name the line (or accept what pandas rejected)
        return read_sparse_csv_ref(path, n, kind)
    return idx, vals


def _header_ok(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.readline().count(b",") == 1


def read_sparse_csv_ref(path: str | os.PathLike, n: int, kind: str = "mask"):
    """Parse a sparse OpenKBP CSV with the ``csv`` module (reference implementation).

    Args:
        path: the file (header ``,data``, rows ``flatindex,value``).
        n: number of voxels of the grid; every index must be in ``[0, n)``.
        kind: ``"mask"`` (values ignored), ``"ct"`` (finite values) or ``"dose"`` (finite, ≥ 0).
    Returns:
        ``(idx (N,) int64, vals (N,) float64 or None for masks)`` in file order.
    Raises:
        MddoseError naming the file and line of the first problem.
    """
    path = Path(path)
    idx: list[int] = []
    vals: list[float] = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or len(header) != 2:
                raise MddoseError("line 1: expected the header ',data'", path)
            for lineno, row in enumerate(reader, start=2):
                if not row:
                    continue
                i, v = _parse_row(path, lineno, row, n, kind)
                idx.append(i)
                vals.append(v)
    except UnicodeDecodeError as exc:
        raise MddoseError(f"not a text CSV file ({exc.reason})", path) from None
    out_vals = None if kind == "mask" else np.asarray(vals, dtype=np.float64)
    return np.asarray(idx, dtype=np.int64), out_vals


def _parse_row(path: Path, lineno: int, row: list[str], n: int, kind: str) -> tuple[int, float]:
    where = f"line {lineno}"
    if len(row) == 1 and kind == "mask":  # "index" without the trailing comma: accepted like pandas does
        row = [row[0], ""]
    if len(row) != 2:
        raise MddoseError(f"{where}: expected 'index,value', got {','.join(row)!r}", path)
    try:
        i = int(row[0])
    except ValueError:
        raise MddoseError(f"{where}: index {row[0]!r} is not an integer", path) from None
    if not 0 <= i < n:
        raise MddoseError(f"{where}: index {i} is outside the grid of {n} voxels", path)
    if kind == "mask":
        return i, 0.0
    try:
        v = float(row[1])
    except ValueError:
        raise MddoseError(f"{where}: value {row[1]!r} is not a number", path) from None
    if not math.isfinite(v):
        raise MddoseError(f"{where}: value is {row[1]!r} (NaN or infinite)", path)
    if kind == "dose" and v < 0:
        raise MddoseError(f"{where}: negative dose {v:g} Gy", path)
    return i, v


def count_duplicates(idx: np.ndarray, n: int) -> int:
    """Number of rows of ``idx`` (N,) whose index already appeared (indices in ``[0, n)``); O(N + n)."""
    seen = np.zeros(n, dtype=bool)
    seen[idx] = True
    return int(idx.size - np.count_nonzero(seen))


def _read_sparse(path: Path, fshape: tuple[int, int, int], kind: str, fill: float = 0.0,
                 dtype=np.float32, duplicates: dict[str, int] | None = None) -> np.ndarray:
    """Read a sparse CSV into a dense (Z, Y, X) array in contract order (repeated indices: last row wins,
    counted in ``duplicates[file name]`` when given)."""
    n = int(np.prod(fshape))
    idx, vals = read_sparse_csv_fast(regular_file(path, "CSV file"), n, kind)
    if duplicates is not None and (k := count_duplicates(idx, n)):
        duplicates[path.name] = k
    out = np.full(n, fill, dtype=dtype)
    pidx = file_to_patient_index(idx, fshape)
    out[pidx] = True if vals is None else vals
    return out.reshape(patient_shape(fshape))


def read_voxel_dimensions(path: str | os.PathLike) -> tuple[float, float, float]:
    """Three spacings (mm) in file-axis order (A0, A1, A2) from ``voxel_dimensions.csv``."""
    path = regular_file(path, "voxel-size file")
    try:
        text = path.read_text(encoding="utf-8")
        vals = [float(t) for t in text.replace(",", " ").split()]
    except (ValueError, UnicodeDecodeError):
        raise MddoseError("expected three numbers (voxel sizes in mm)", path) from None
    if len(vals) != 3 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise MddoseError(f"expected three positive voxel sizes in mm, got {vals}", path)
    return vals[0], vals[1], vals[2]


def _read_sidecar(d: Path) -> dict:
    path = d / SIDECAR
    if regular_file(path, "mddose sidecar", required=False) is None:
        return {}
    meta = read_json_object(path, "mddose sidecar")
    try:
        out = {}
        if "grid_shape" in meta:
            gs = tuple(int(v) for v in meta["grid_shape"])
            if len(gs) != 3 or min(gs) < 1:
                raise ValueError(f"bad grid_shape {gs}")
            out["grid_shape"] = gs
        if "id" in meta:
            out["id"] = meta["id"]
        if "prescriptions" in meta:
            out["prescriptions"] = {str(k): float(v) for k, v in dict(meta["prescriptions"]).items()}
        if "origin" in meta:
            out["origin"] = tuple(float(v) for v in meta["origin"])
        if "direction" in meta:
            out["direction"] = np.asarray(meta["direction"], dtype=np.float64)
        return out
    except (ValueError, TypeError, KeyError) as exc:
        raise MddoseError(f"malformed mddose sidecar ({exc})", path) from None


def roi_files(d: str | os.PathLike) -> dict[str, Path]:
    """ROI name → CSV file of an OpenKBP folder (OpenKBP targets, then OARs, then others sorted).

    Every ``*.csv`` entry counts (a FIFO or broken link too: reading it then reports it)."""
    found = {p.stem: p for p in list_dir(d) if p.suffix == ".csv" and p.stem not in RESERVED
             and not p.name.startswith(".")}
    order = [*OPENKBP_TARGETS, *OPENKBP_OARS]
    names = [n for n in order if n in found] + sorted(n for n in found if n not in order)
    return {n: found[n] for n in names}


def read_openkbp_patient(d: str | os.PathLike) -> Patient:
    """Read an OpenKBP patient folder into a :class:`Patient` in contract orientation.

    Returns a patient with ct (Z, Y, X) float32 HU, dose (Z, Y, X) float32 Gy or None, masks and
    possible-dose mask (Z, Y, X) bool, spacing (sz, sy, sx) mm. Raises MddoseError naming the file on
    missing ct.csv / voxel_dimensions.csv, malformed rows, indices outside the grid, NaN or negative dose.
    """
    d = Path(d)
    if not d.is_dir():
        raise MddoseError("not a directory", d)
    log_once("openkbp-parser", "OpenKBP CSV: pandas C-engine parser (reference: csv module on errors)",
             logging.DEBUG)
    ct_path = regular_file(d / "ct.csv", "CT file")
    v0, v1, v2 = read_voxel_dimensions(d / "voxel_dimensions.csv")
    side = _read_sidecar(d)
    fshape = side.get("grid_shape", file_shape(GRID))
    dups: dict[str, int] = {}
    ct = _read_sparse(ct_path, fshape, "ct", duplicates=dups)
    np.clip(ct, 0.0, CT_MAX, out=ct)
    ct -= np.float32(CT_OFFSET)
    dose_path = regular_file(d / "dose.csv", "dose file", required=False)
    dose = _read_sparse(dose_path, fshape, "dose", duplicates=dups) if dose_path else None
    pdm_path = regular_file(d / "possible_dose_mask.csv", "possible-dose mask", required=False)
    pdm = _read_sparse(pdm_path, fshape, "mask", False, bool, dups) if pdm_path else None
    masks = {name: _read_sparse(p, fshape, "mask", False, bool, dups) for name, p in roi_files(d).items()}
    kwargs = {k: side[k] for k in ("origin", "direction", "prescriptions") if k in side}
    meta: dict = {"source": str(d), "format": "openkbp"}
    if dups:
        meta["duplicate_indices"] = dups
    pid = reader_patient_id(d, side.get("id"), d / SIDECAR)
    return Patient(id=pid, ct=ct, spacing=(v2, v0, v1), masks=masks, dose=dose, possible_dose_mask=pdm,
                   meta=meta, **kwargs)


# ---------------------------------------------------------------------------------------- writing
def _format_values(vals: np.ndarray) -> list[str]:
    """Shortest round-trip decimal strings: float32 input → float32 repr, else float64 repr."""
    if vals.dtype == np.float32:
        return vals.astype(str).tolist()
    return [repr(v) for v in vals.astype(np.float64).tolist()]


def write_sparse_csv(path: str | os.PathLike, arr_zyx: np.ndarray, kind: str = "mask") -> Path:
    """Write a (Z, Y, X) array as a sparse OpenKBP CSV (nonzero voxels in file C-order).

    ``kind="mask"`` writes ``index,`` rows for true voxels; otherwise ``index,value`` for nonzero values.
    """
    path = Path(path)
    farr = to_file_order(arr_zyx).ravel()
    idx = np.flatnonzero(farr)
    if kind == "mask":
        body = "".join(f"{i},\n" for i in idx.tolist())
    else:
        vals = _format_values(farr[idx])
        body = "".join(f"{i},{v}\n" for i, v in zip(idx.tolist(), vals))
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(",data\n")
        fh.write(body)
    return path


def _check_dose(dose: np.ndarray, what: str) -> None:
    if dose.ndim != 3:
        raise MddoseError(f"{what}: dose must be 3D (z, y, x), got shape {dose.shape}")
    if not np.all(np.isfinite(dose)):
        raise MddoseError(f"{what}: dose contains NaN or infinite values")
    if dose.size and float(dose.min()) < 0:
        raise MddoseError(f"{what}: dose contains negative values")


def write_dose_csv(dose: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a dose (Z, Y, X) Gy in the OpenKBP prediction format (``pt_N.csv``).

    Header ``,data``; one row ``flatindex,value`` per voxel with dose > 0, in file C-order; values in
    shortest round-trip notation (float32 input gives float32 digits, float64 gives Python's repr — as
    pandas' ``to_csv`` writes them). The file is written atomically.
    """
    from mddose.utils.fs import atomic_save

    dose = np.asarray(dose)
    if dose.dtype not in (np.float32, np.float64):
        dose = dose.astype(np.float32)
    _check_dose(dose, str(path))
    return atomic_save(path, lambda tmp: write_sparse_csv(tmp, dose, kind="dose"))


def read_dose_csv(path: str | os.PathLike, shape: tuple[int, int, int] = GRID) -> np.ndarray:
    """Read a prediction ``pt_N.csv`` (or a ``dose.csv``) into (Z, Y, X) float32 Gy.

    ``shape`` is the patient grid (Z, Y, X) (128³ for OpenKBP).
    """
    return _read_sparse(regular_file(path, "dose file"), file_shape(tuple(shape)), "dose")


def write_openkbp_patient(patient: Patient, d: str | os.PathLike) -> Path:
    """Write ``patient`` as an OpenKBP folder ``d`` (created; files inside are overwritten).

    For atomic, non-overwriting output use :func:`mddose.data.io.save_patient`.
    """
    d = Path(d)
    patient.validate_id()
    for name in patient.masks:
        if name in RESERVED or not name or any(c in name for c in '/\\:*?"<>|') or name.startswith("."):
            raise MddoseError(f"patient {patient.id}: ROI name {name!r} can't be an OpenKBP file name")
    d.mkdir(parents=True, exist_ok=True)
    ct = np.clip(patient.ct + np.float32(CT_OFFSET), 0.0, CT_MAX).astype(np.float32)
    write_sparse_csv(d / "ct.csv", ct, kind="ct")
    if patient.dose is not None:
        write_sparse_csv(d / "dose.csv", patient.dose, kind="dose")
    if patient.possible_dose_mask is not None:
        write_sparse_csv(d / "possible_dose_mask.csv", patient.possible_dose_mask)
    for name, m in patient.masks.items():
        write_sparse_csv(d / f"{name}.csv", m)
    sz, sy, sx = patient.spacing
    (d / "voxel_dimensions.csv").write_text("".join(f"{v:.18e}\n" for v in (sy, sx, sz)))
    side = {"id": patient.id, "grid_shape": list(file_shape(patient.shape)),
            "prescriptions": patient.prescriptions, "origin": list(patient.origin),
            "direction": patient.direction.tolist()}
    (d / SIDECAR).write_text(json.dumps(side, indent=1) + "\n")
    return d
