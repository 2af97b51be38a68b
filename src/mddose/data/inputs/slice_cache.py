"""On-disk cache of per-patient slice arrays, and assembly of a whole dataset from it.

Layout: per patient ``<cache root>/slices/<key>/`` (:func:`mddose.utils.config.cache_root`:
``$MDDOSE_CACHE_DIR``, default ``~/.cache/mddose``) with ``cond.npy`` ((S, C, H, W)), ``dose.npy``
((S, 1, H, W), if the patient has a dose), ``mask.npy`` ((S, 1, H, W) uint8 possible-dose mask), ``z.npy``
((S,) int64) and ``meta.json`` (written last; holds the crop box); per dataset (an ordered list of patients)
``slices/datasets/<key>/`` with the assembled ``cond.npy`` / ``dose.npy`` / ``mask.npy`` /
``patient_index.npy`` / ``z.npy`` and ``index.json`` — memory-mapped as the dataset's arrays.

**Key** — SHA-256 over the slice-cache version, the storage dtype, :meth:`SliceConfig.build_key` (every
field but the augmentation flags: so ``crop``, ``crop_margin`` and ``neighbours`` too), the prediction
flag and the *source key*: for a patient directory the patient-cache key of
:func:`mddose.data.cache.cache_key` (path + size/mtime of every file, so no file is read on a hit), for a
:class:`Patient` object a BLAKE2 hash of its arrays and geometry. A hit therefore does no CSV parsing, no
patient loading and no resizing.

Entries are never modified in place: new ones are renamed into place and damaged ones deleted, so
memory maps held by live datasets stay valid (truncating a mapped file would crash its reader).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mddose.data.cache import cache_key
from mddose.data.inputs.slices import SliceArrays, SliceConfig, patient_to_slices
from mddose.data.io import detect_format, load_patient
from mddose.data.patient import Patient
from mddose.errors import MddoseError
from mddose.utils.batch import item_name, skip_item
from mddose.utils.config import cache_root
from mddose.utils.fs import atomic_dir
from mddose.utils.log import logger

#: Bump when the slice representation changes (2: per-slice possible-dose mask, crop box, 2.5D channels).
SLICE_CACHE_VERSION = 2


def slices_root() -> Path:
    """``<cache root>/slices`` (:func:`mddose.utils.config.cache_root`)."""
    return cache_root() / "slices"


def patient_hash(p: Patient) -> str:
    """Content hash (hex) of a patient's arrays, ROI names, prescriptions and spacing."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([list(p.shape), list(p.spacing), sorted(p.prescriptions.items())]).encode())
    h.update(np.ascontiguousarray(p.ct).tobytes())
    for name in sorted(p.masks):
        h.update(name.encode() + b"\0")
        h.update(np.packbits(p.masks[name]).tobytes())
    for arr, tag in ((p.dose, b"dose"), (p.possible_dose_mask, b"pdm")):
        h.update(tag)
        if arr is not None:
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def source_key(item: Patient | str | os.PathLike) -> str:
    """Key of a patient object (content hash) or patient directory (patient-cache key, stat only)."""
    if isinstance(item, Patient):
        return "patient:" + patient_hash(item)
    path = Path(item)
    return "path:" + cache_key(path, detect_format(path))


def slice_key(src_key: str, cfg: SliceConfig, dtype: str, for_prediction: bool = False) -> str:
    """Hex cache key of (source, config, dtype, prediction flag)."""
    parts = [SLICE_CACHE_VERSION, src_key, cfg.build_key(), dtype, bool(for_prediction)]
    if cfg.priors is not None:              # the priors' own definition version too
        from mddose.data.priors.cache import PRIORS_CACHE_VERSION
        parts.append(["priors", PRIORS_CACHE_VERSION])
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def write_slice_entry(entry: Path, sa: SliceArrays) -> None:
    """Write ``sa`` as cache entry ``entry`` atomically (replacing a stale one)."""
    with atomic_dir(entry, force=True) as tmp:
        np.save(tmp / "cond.npy", sa.cond)
        if sa.dose is not None:
            np.save(tmp / "dose.npy", sa.dose)
        np.save(tmp / "mask.npy", np.asarray(sa.mask, dtype=np.uint8))
        np.save(tmp / "z.npy", sa.z)
        meta = {"version": SLICE_CACHE_VERSION, "patient_id": sa.patient_id, "missing": list(sa.missing),
                "cond": [list(sa.cond.shape), sa.cond.dtype.str], "has_dose": sa.dose is not None,
                "box": [int(v) for v in sa.box]}
        (tmp / "meta.json").write_text(json.dumps(meta))


def read_slice_entry(entry: Path) -> SliceArrays:
    """Open a cache entry (arrays memory-mapped read-only); raises if incomplete or inconsistent."""
    meta = json.loads((entry / "meta.json").read_text())
    if meta.get("version") != SLICE_CACHE_VERSION:
        raise ValueError(f"slice cache version {meta.get('version')} != {SLICE_CACHE_VERSION}")
    cond = np.load(entry / "cond.npy", mmap_mode="r", allow_pickle=False)
    if [list(cond.shape), cond.dtype.str] != meta["cond"]:
        raise ValueError(f"cond.npy has shape {cond.shape} {cond.dtype}, expected {meta['cond']}")
    z = np.load(entry / "z.npy", allow_pickle=False)
    dose = np.load(entry / "dose.npy", mmap_mode="r", allow_pickle=False) if meta["has_dose"] else None
    mask = np.load(entry / "mask.npy", mmap_mode="r", allow_pickle=False)
    one = (cond.shape[0], 1, *cond.shape[2:])
    if len(z) != cond.shape[0] or (dose is not None and dose.shape != one) or mask.shape != one \
            or mask.dtype != np.uint8 or len(meta["box"]) != 4:
        raise ValueError("inconsistent array shapes")
    return SliceArrays(cond=cond, dose=dose, z=z, mask=mask, box=tuple(int(v) for v in meta["box"]),
                       missing=tuple(meta["missing"]), patient_id=meta["patient_id"],
                       meta={"cache_entry": str(entry), "cache_hit": True})


def _load(item: Patient | str | os.PathLike) -> Patient:
    return item if isinstance(item, Patient) else load_patient(item)


def _build(item, cfg: SliceConfig, dtype: str, for_prediction: bool) -> SliceArrays:
    sa = patient_to_slices(_load(item), cfg, for_prediction=for_prediction)
    sa.cond = sa.cond.astype(dtype, copy=False)
    sa.dose = None if sa.dose is None else sa.dose.astype(dtype, copy=False)
    sa.meta["cache_hit"] = False
    return sa


def cached_slices(item: Patient | str | os.PathLike, cfg: SliceConfig, *, dtype: str = "float16",
                  cache: bool = True, for_prediction: bool = False, key: str | None = None) -> SliceArrays:
    """:func:`patient_to_slices` of a patient or patient directory, through the slice cache.

    Arrays come back in ``dtype`` (memory-mapped read-only on a cache hit or right after a write).
    A corrupt entry is logged, removed and rebuilt; an unwritable cache only logs a warning.
    ``key`` is the entry's :func:`slice_key` if already known (saves re-hashing a Patient).
    """
    if not cache:
        return _build(item, cfg, dtype, for_prediction)
    entry = slices_root() / (key or slice_key(source_key(item), cfg, dtype, for_prediction))
    if (entry / "meta.json").is_file():
        try:
            return read_slice_entry(entry)
        except Exception as exc:  # noqa: BLE001 - any damage means: rebuild
            logger.warning("slice cache entry %s is damaged (%s); rebuilding", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
    sa = _build(item, cfg, dtype, for_prediction)
    try:
        write_slice_entry(entry, sa)
        return read_slice_entry(entry)  # memory-mapped: the in-memory copy can be freed
    except (OSError, MddoseError) as exc:
        logger.warning("could not write slice cache entry %s: %s", entry, exc)
        return sa


@dataclass
class CollectedSlices:
    """Every slice of several patients in contiguous arrays (see :class:`~mddose.data.inputs.slice_dataset.SliceDataset`)."""

    cond: np.ndarray                    # (N, C, H, W)
    dose: np.ndarray                    # (N, 1, H, W)
    mask: np.ndarray                    # (N, 1, H, W) uint8 0/1 possible-dose mask
    patient_index: np.ndarray           # (N,) int64 index into patient_ids
    z: np.ndarray                       # (N,) int64
    patient_ids: list[str] = field(default_factory=list)
    missing: list[tuple[str, ...]] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)   # per patient (y0, y1, x0, x1)
    bad: list[tuple[str, str]] = field(default_factory=list)


def _parts(items, keys, cfg: SliceConfig, dtype: str, cache: bool, progress: bool
           ) -> tuple[list[SliceArrays], list[tuple[str, str]]]:
    """Per-patient slice arrays (memory-mapped when cached) and the (item, message) of unusable ones."""
    from tqdm import tqdm

    parts, bad = [], []
    for item, key in tqdm(list(zip(items, keys)), desc="slicing patients", unit="pt", disable=not progress):
        try:
            sa = cached_slices(item, cfg, dtype=dtype, cache=cache, key=key)
            if sa.dose is None:
                raise MddoseError(f"patient {item_name(item)}: has no dose (needed for training)")
        except Exception as exc:  # noqa: BLE001 - any failure of one patient: report it and go on
            bad.append(skip_item(item, exc))
            continue
        parts.append(sa)
    return parts, bad


def _assemble(parts: list[SliceArrays], dtype: str, alloc) -> CollectedSlices:
    """Copy the parts one by one into arrays from ``alloc(name, shape, dtype)`` (frees each part after)."""
    n = sum(len(p.z) for p in parts)
    c, h, w = parts[0].cond.shape[1:]
    cond, dose = alloc("cond", (n, c, h, w), dtype), alloc("dose", (n, 1, h, w), dtype)
    mask = alloc("mask", (n, 1, h, w), np.uint8)
    pidx, z = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    ids, missing, boxes, k = [], [], [], 0
    for i in range(len(parts)):
        sa = parts[i]
        s = len(sa.z)
        cond[k:k + s], dose[k:k + s], mask[k:k + s] = sa.cond, sa.dose, sa.mask
        pidx[k:k + s], z[k:k + s] = i, sa.z
        ids.append(sa.patient_id)
        missing.append(tuple(sa.missing))
        boxes.append(tuple(int(v) for v in sa.box))
        parts[i] = None  # type: ignore[call-overload]  # drop the memory map now
        k += s
    return CollectedSlices(cond=cond, dose=dose, mask=mask, patient_index=pidx, z=z, patient_ids=ids,
                           missing=missing, boxes=boxes)


def _write_dataset_entry(entry: Path, parts: list[SliceArrays], dtype: str, bad) -> None:
    """Assemble ``parts`` straight into ``.npy`` files of a new dataset entry (no in-memory copy)."""
    with atomic_dir(entry, force=True) as tmp:
        maps = []

        def alloc(name, shape, dt):
            maps.append(np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dt, shape=shape))
            return maps[-1]

        out = _assemble(parts, dtype, alloc)
        for m in maps:
            m.flush()
        del maps, out.cond, out.dose, out.mask
        np.save(tmp / "patient_index.npy", out.patient_index)
        np.save(tmp / "z.npy", out.z)
        index = {"version": SLICE_CACHE_VERSION, "patient_ids": out.patient_ids,
                 "missing": [list(m) for m in out.missing], "bad": [list(b) for b in bad],
                 "boxes": [list(b) for b in out.boxes]}
        (tmp / "index.json").write_text(json.dumps(index))


def _read_dataset_entry(entry: Path) -> CollectedSlices:
    """Open a dataset entry: cond/dose/mask memory-mapped copy-on-write (writable, writes stay private)."""
    index = json.loads((entry / "index.json").read_text())
    if index.get("version") != SLICE_CACHE_VERSION:
        raise ValueError(f"slice cache version {index.get('version')} != {SLICE_CACHE_VERSION}")
    cond = np.load(entry / "cond.npy", mmap_mode="c", allow_pickle=False)
    dose = np.load(entry / "dose.npy", mmap_mode="c", allow_pickle=False)
    mask = np.load(entry / "mask.npy", mmap_mode="c", allow_pickle=False)
    pidx = np.load(entry / "patient_index.npy", allow_pickle=False)
    z = np.load(entry / "z.npy", allow_pickle=False)
    n = len(z)
    one = (n, 1, *cond.shape[2:])
    if cond.shape[0] != n or dose.shape != one or mask.shape != one or mask.dtype != np.uint8 or len(pidx) != n \
            or (n and pidx.max() >= len(index["patient_ids"])) or len(index["boxes"]) != len(index["patient_ids"]):
        raise ValueError("inconsistent array shapes")
    return CollectedSlices(cond=cond, dose=dose, mask=mask, patient_index=pidx, z=z,
                           patient_ids=index["patient_ids"], missing=[tuple(m) for m in index["missing"]],
                           bad=[tuple(b) for b in index["bad"]], boxes=[tuple(b) for b in index["boxes"]])


def collect_slices(items: Sequence[Patient | str | os.PathLike], cfg: SliceConfig, *, cache: bool = True,
                   dtype: str = "float16", progress: bool = False) -> CollectedSlices:
    """All slices of ``items`` in contiguous arrays; unusable patients are skipped and listed in ``bad``.

    With ``cache``, the assembled dataset is itself a cache entry (``slices/datasets/<key>``, key over the
    per-patient keys in order): a warm build only memory-maps two ``.npy`` files (copy-on-write), so it
    costs no copy and no anonymous memory; a cold one assembles the per-patient entries straight into
    those files. Without ``cache`` the parts are built in memory and copied one by one into one array.
    Raises :class:`MddoseError` if no patient is usable.
    """
    bad: list[tuple[str, str]] = []
    good, keys = [], []
    for item in items:
        try:
            keys.append(slice_key(source_key(item), cfg, dtype) if cache else None)
            good.append(item)
        except Exception as exc:  # noqa: BLE001 - any failure of one patient: report it and go on
            bad.append(skip_item(item, exc))
    entry = None
    if cache and good:
        dkey = hashlib.sha256(json.dumps([SLICE_CACHE_VERSION, "dataset", keys]).encode()).hexdigest()[:32]
        entry = slices_root() / "datasets" / dkey
        if (entry / "index.json").is_file():
            try:
                out = _read_dataset_entry(entry)
                out.bad = bad + out.bad
                return out
            except Exception as exc:  # noqa: BLE001 - any damage means: rebuild
                logger.warning("slice dataset cache entry %s is damaged (%s); rebuilding", entry, exc)
                shutil.rmtree(entry, ignore_errors=True)
    parts, more_bad = _parts(good, keys, cfg, dtype, cache, progress)
    if not parts:
        allbad = bad + more_bad
        raise MddoseError("no usable patients for the slice dataset"
                          + (f" ({allbad[0][0]}: {allbad[0][1]})" if allbad else ""))
    if entry is not None:
        try:
            _write_dataset_entry(entry, parts, dtype, more_bad)
            out = _read_dataset_entry(entry)
            out.bad = bad + out.bad
            return out
        except (OSError, MddoseError, ValueError) as exc:
            logger.warning("could not write slice dataset cache entry %s: %s", entry, exc)
            parts, more_bad = _parts(good, keys, cfg, dtype, cache, progress)
    out = _assemble(parts, dtype, lambda name, shape, dt: np.empty(shape, dtype=dt))
    out.bad = bad + more_bad
    return out
