"""NIfTI patient folders ⇄ :class:`~mddose.data.patient.Patient` (nibabel).

Folder layout::

    ct.nii.gz                   CT (HU, float32)
    dose.nii.gz                 dose (Gy, float32), optional
    possible_dose_mask.nii.gz   uint8 0/1, optional
    masks/<ROI>.nii.gz          uint8 0/1, one per ROI
    patient.json                {"id", "prescriptions", "rois" (order), "spacing", "origin", "direction"}

Geometry: a NIfTI image is indexed ``[i, j, k]`` and its affine maps that index to **RAS** mm. We store
the contract array (z, y, x) transposed so that ``(i, j, k) = (x, y, z)``; the patient's LPS affine
(:meth:`Patient.affine`, index (x, y, z) → LPS mm) becomes ``diag(-1, -1, 1, 1) @ affine_lps`` (LPS → RAS
flips the first two world axes). Reading inverts this: spacing = column norms, direction = normalised
columns, origin = translation. The NIfTI header keeps the affine in float32, so ``patient.json`` also
records spacing/origin/direction in float64; the reader uses those when they agree with the image's affine
(to float32 precision), which makes write → read exact. The patient id is ``patient.json``'s ``id`` or the
folder's name, made safe by :func:`mddose.data.formats.common.reader_patient_id`; only regular files are
opened (a FIFO, a broken link or an unreadable file is a one-line error).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from mddose.data.formats.common import list_dir, reader_patient_id, regular_file
from mddose.data.patient import OPENKBP_OARS, OPENKBP_TARGETS, Patient
from mddose.errors import MddoseError
from mddose.utils.config import read_json_object
from mddose.utils.fs import atomic_save

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_REL_TOL = 1e-5  # float32 header precision


def affine_from_geometry(spacing, origin, direction) -> np.ndarray:
    """4×4 RAS affine of index (x, y, z) from contract spacing (sz, sy, sx), LPS origin, direction."""
    sz, sy, sx = spacing
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(direction, dtype=np.float64) @ np.diag([sx, sy, sz])
    aff[:3, 3] = origin
    return _LPS_TO_RAS @ aff


def geometry_from_affine(affine_ras: np.ndarray):
    """Inverse of :func:`affine_from_geometry`: ``(spacing (sz, sy, sx), origin LPS, direction (3, 3))``."""
    lps = _LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)
    cols = lps[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    if not (np.all(np.isfinite(lps)) and np.all(norms > 0)):
        sizes = ", ".join(f"{v:g}" for v in norms[::-1])
        raise ValueError(f"voxel size ({sizes}) mm (z, y, x) is zero or not finite")
    direction = cols / norms
    spacing = (float(norms[2]), float(norms[1]), float(norms[0]))
    origin = tuple(float(v) for v in lps[:3, 3])
    return spacing, origin, direction


def _load_image(path: Path):
    import nibabel as nib

    regular_file(path, "NIfTI image")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise MddoseError(f"can't read NIfTI image ({type(exc).__name__}: {exc})", path) from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise MddoseError(f"expected a 3D image, got shape {data.shape}", path)
    return img, data


def _check_pixdim(img, path: Path) -> None:
    """Without an sform the affine comes from ``pixdim`` (the voxel size), which nibabel silently "repairs" (0 → 1,
    negative → its absolute value): refuse a voxel size that is zero, negative or not finite instead."""
    from nibabel.openers import ImageOpener

    try:
        if int(img.header["sform_code"]) != 0:
            return
        with ImageOpener(str(path)) as fh:          # the header as written (nibabel's copy is already repaired)
            raw = type(img.header).from_fileobj(fh, check=False)
        zooms = [float(v) for v in raw["pixdim"][1:4]]
    except Exception:  # noqa: BLE001 - not a NIfTI header (the image itself was read): nothing to check
        return
    if not all(math.isfinite(z) and z > 0 for z in zooms):
        raise MddoseError("voxel size (pixdim) must be positive and finite, got "
                          f"({', '.join(f'{z:g}' for z in zooms)}) (x, y, z)", path)


def read_nifti_array(path: str | os.PathLike):
    """Read one NIfTI image: ``(array (Z, Y, X), spacing (sz, sy, sx), origin LPS (x, y, z), direction)``.

    A voxel size that is zero, negative (``pixdim``) or not finite is refused (one line naming the file)."""
    path = Path(path)
    img, data = _load_image(path)
    _check_pixdim(img, path)
    try:
        spacing, origin, direction = geometry_from_affine(img.affine)
    except ValueError as exc:
        raise MddoseError(f"bad affine ({exc})", path) from None
    return np.ascontiguousarray(data.transpose(2, 1, 0)), spacing, origin, direction


def write_nifti_array(arr: np.ndarray, path: str | os.PathLike, like: Patient) -> Path:
    """Write a (Z, Y, X) array with ``like``'s geometry as a NIfTI file (atomically). Bool → uint8."""
    import nibabel as nib

    arr = np.asarray(arr)
    if arr.shape != like.shape:
        raise MddoseError(f"array shape {arr.shape} differs from the patient's {like.shape}", path)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    affine = affine_from_geometry(like.spacing, like.origin, like.direction)
    img = nib.Nifti1Image(np.asarray(arr.transpose(2, 1, 0)), affine)
    img.header.set_data_dtype(arr.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return atomic_save(path, lambda tmp: nib.save(img, tmp))


def _read_json(path: Path) -> dict:
    if regular_file(path, "patient.json", required=False) is None:
        return {}
    return read_json_object(path, "patient.json")


def _same_geometry(a, b) -> bool:
    (sa, oa, da), (sb, ob, db) = a, b
    scale = max(1.0, *np.abs(oa), *np.abs(ob))
    return (np.allclose(sa, sb, rtol=_REL_TOL, atol=0) and np.allclose(oa, ob, rtol=0, atol=_REL_TOL * scale)
            and np.allclose(da, db, rtol=0, atol=_REL_TOL))


def _json_geometry(meta: dict, path: Path):
    try:
        return (tuple(float(v) for v in meta["spacing"]), tuple(float(v) for v in meta["origin"]),
                np.asarray(meta["direction"], dtype=np.float64))
    except KeyError:
        return None
    except (TypeError, ValueError) as exc:
        raise MddoseError(f"bad geometry ({exc})", path) from None


def _read_like(path: Path, shape, geometry, what: str) -> np.ndarray:
    arr, *geo = read_nifti_array(path)
    if arr.shape != shape:
        raise MddoseError(f"{what} has shape {arr.shape} (z, y, x) but the CT has {shape}", path)
    if not _same_geometry(tuple(geo), geometry):
        raise MddoseError(f"{what} is not on the CT's grid (affine differs from ct.nii.gz)", path)
    return arr


def _roi_order(names: list[str], meta: dict) -> list[str]:
    rois = meta.get("rois", [])
    given = [n for n in rois if n in names] if isinstance(rois, list) else []
    order = [*OPENKBP_TARGETS, *OPENKBP_OARS]
    rest = [n for n in names if n not in given]
    return given + [n for n in order if n in rest] + sorted(n for n in rest if n not in order)


def read_nifti_patient(d: str | os.PathLike) -> Patient:
    """Read a NIfTI patient folder (see module docstring). Errors name the offending file."""
    d = Path(d)
    if not d.is_dir():
        raise MddoseError("not a directory", d)
    meta = _read_json(d / "patient.json")
    ct_path = d / "ct.nii.gz" if (d / "ct.nii.gz").is_file() or not (d / "ct.nii").is_file() else d / "ct.nii"
    ct, *geo = read_nifti_array(ct_path)
    geometry = tuple(geo)
    jgeo = _json_geometry(meta, d / "patient.json")
    if jgeo is not None and _same_geometry(jgeo, geometry):
        geometry = jgeo
    dose = pdm = None
    if regular_file(d / "dose.nii.gz", "dose image", required=False):
        dose = _read_like(d / "dose.nii.gz", ct.shape, geometry, "dose").astype(np.float32)
        if not np.all(np.isfinite(dose)):
            raise MddoseError("dose contains NaN or infinite values", d / "dose.nii.gz")
        if dose.size and float(dose.min()) < 0:
            raise MddoseError(f"dose contains negative values (min {float(dose.min()):g} Gy)", d / "dose.nii.gz")
    if regular_file(d / "possible_dose_mask.nii.gz", "possible-dose mask image", required=False):
        pdm = _read_like(d / "possible_dose_mask.nii.gz", ct.shape, geometry, "possible-dose mask") != 0
    mask_dir = d / "masks"
    entries = list_dir(mask_dir) if mask_dir.exists() or mask_dir.is_symlink() else []
    files = {p.name[:-len(".nii.gz")]: p for p in entries if p.name.endswith(".nii.gz") and not p.name.startswith(".")}
    masks = {n: _read_like(files[n], ct.shape, geometry, f"mask {n!r}") != 0 for n in _roi_order(list(files), meta)}
    ct = ct.astype(np.float32)
    if not np.all(np.isfinite(ct)):
        raise MddoseError("CT contains NaN or infinite values", ct_path)
    kwargs = {}
    if "prescriptions" in meta:
        try:
            kwargs["prescriptions"] = {str(k): float(v) for k, v in dict(meta["prescriptions"]).items()}
        except (TypeError, ValueError) as exc:
            raise MddoseError(f"bad prescriptions ({exc})", d / "patient.json") from None
    spacing, origin, direction = geometry
    pid = reader_patient_id(d, meta.get("id"), d / "patient.json")
    return Patient(id=pid, ct=ct, spacing=spacing, masks=masks, dose=dose,
                   possible_dose_mask=pdm, origin=origin, direction=direction,
                   meta={"source": str(d), "format": "nifti"}, **kwargs)


def write_nifti_patient(patient: Patient, d: str | os.PathLike) -> Path:
    """Write ``patient`` as a NIfTI folder ``d`` (created; existing files inside are overwritten).

    For atomic, non-overwriting output use :func:`mddose.data.io.save_patient`.
    """
    d = Path(d)
    patient.validate_id()
    for name in patient.masks:
        if not name or any(c in name for c in '/\\:*?"<>|') or name.startswith("."):
            raise MddoseError(f"patient {patient.id}: ROI name {name!r} can't be a file name")
    d.mkdir(parents=True, exist_ok=True)
    write_nifti_array(patient.ct, d / "ct.nii.gz", patient)
    if patient.dose is not None:
        write_nifti_array(patient.dose, d / "dose.nii.gz", patient)
    if patient.possible_dose_mask is not None:
        write_nifti_array(patient.possible_dose_mask, d / "possible_dose_mask.nii.gz", patient)
    (d / "masks").mkdir(exist_ok=True)
    for name, m in patient.masks.items():
        write_nifti_array(m, d / "masks" / f"{name}.nii.gz", patient)
    meta = {"id": patient.id, "prescriptions": patient.prescriptions, "rois": list(patient.masks),
            "spacing": list(patient.spacing), "origin": list(patient.origin),
            "direction": patient.direction.tolist()}
    (d / "patient.json").write_text(json.dumps(meta, indent=1) + "\n")
    return d
