"""On-disk cache of parsed patients: ``.npy`` arrays (memory-mappable) + ``patient.json``.

Layout: :func:`mddose.utils.config.cache_root` (``$MDDOSE_CACHE_DIR``, default ``~/.cache/mddose``)
``/patients/<key>/`` holding ``ct.npy``,
``dose.npy``, ``possible_dose_mask.npy``, ``masks.npy`` ((K, ceil(Z*Y*X/8)) uint8, ``np.packbits`` of the ROIs in the
JSON's order) and
``patient.json`` (scalars, ROI names, array shapes/dtypes), written last.

**Key** — a SHA-256 over the cache version, the format, the resolved source path and, for every regular
file below it, ``(relative path, size, mtime_ns)``. Stat data rather than contents because hashing the
contents means reading every byte of the source (hundreds of MB for a DICOM series), which defeats a cache
whose reads must cost ≤ 30 ms; any edit, copy-over or re-export changes size or mtime_ns (nanosecond
resolution), and a file added or removed changes the file list. An entry is therefore tied to that exact
source state; a stale entry is simply never looked up again (:func:`clear_cache` removes everything).

**Atomicity** — an entry is built in a temporary sibling directory and renamed into place in one
``os.rename``; a reader sees either no entry or a complete one. **Corruption** — an entry that fails to load
(truncated/missing ``.npy``, bad JSON, shape or dtype mismatch) is logged, deleted and rebuilt from source.

Arrays are opened with ``mmap_mode="c"`` (copy-on-write): lazily paged in, writable by the caller, and
writes never reach the cache files. ROI masks are unpacked into ordinary arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from mddose.data.patient import Patient
from mddose.utils.config import cache_root
from mddose.utils.log import logger

#: Bump when the cached representation or any reader's output changes (2: safe ids, duplicate-index counts).
CACHE_VERSION = 2
_ARRAYS = ("ct", "dose", "possible_dose_mask")


def _source_files(src: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every non-hidden file below ``src``, sorted (a broken link or a
    FIFO by its own ``lstat``: the reader, not the key, reports it)."""
    if src.is_file():
        st = src.stat()
        return [(src.name, st.st_size, st.st_mtime_ns)]
    out = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            p = Path(dirpath, name)
            try:
                st = p.stat()
            except FileNotFoundError:
                st = p.lstat()
            out.append((p.relative_to(src).as_posix(), st.st_size, st.st_mtime_ns))
    return sorted(out)


def cache_key(src: str | os.PathLike, fmt: str) -> str:
    """Hex key of the source ``src`` read as format ``fmt`` (see the module docstring)."""
    src = Path(src).resolve()
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, fmt, str(src)]).encode())
    for rel, size, mtime in _source_files(src):
        h.update(f"\n{rel}\0{size}\0{mtime}".encode())
    return h.hexdigest()[:32]


def entry_dir(src: str | os.PathLike, fmt: str) -> Path:
    """The cache directory of ``src`` (exists only once cached)."""
    return cache_root() / "patients" / cache_key(src, fmt)


# ---------------------------------------------------------------------------------------- write / read
def write_entry(patient: Patient, entry: Path) -> None:
    """Write ``patient`` as cache entry ``entry`` atomically (no-op if another process won the race)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        arrays = {}
        for name in _ARRAYS:
            arr = getattr(patient, name)
            if arr is not None:
                np.save(tmp / f"{name}.npy", arr)
                arrays[name] = [list(arr.shape), arr.dtype.str]
        names = list(patient.masks)
        if names:  # bit-packed: 8x smaller, unpacking 10 ROIs of 128^3 takes ~2 ms
            stack = np.packbits(np.stack([patient.masks[n].ravel() for n in names]), axis=1)
            np.save(tmp / "masks.npy", stack)
            arrays["masks"] = [list(stack.shape), stack.dtype.str]
        meta = {"version": CACHE_VERSION, "id": patient.id, "spacing": list(patient.spacing),
                "origin": list(patient.origin), "direction": patient.direction.tolist(),
                "prescriptions": patient.prescriptions, "meta": _jsonable(patient.meta),
                "masks": names, "arrays": arrays}
        (tmp / "patient.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, entry)
        except OSError:  # entry appeared meanwhile (another process) — keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _jsonable(meta: dict) -> dict:
    try:
        json.dumps(meta)
        return meta
    except (TypeError, ValueError):
        return {k: str(v) for k, v in meta.items()}


def read_entry(entry: Path, mmap: bool = True) -> Patient:
    """Load a cache entry; raises (any exception) if it is incomplete or inconsistent."""
    meta = json.loads((entry / "patient.json").read_text())
    if meta.get("version") != CACHE_VERSION:
        raise ValueError(f"cache version {meta.get('version')} != {CACHE_VERSION}")
    mode = "c" if mmap else None
    arrays = {}
    for name, (shape, dtype) in meta["arrays"].items():
        arr = np.load(entry / f"{name}.npy", mmap_mode=mode, allow_pickle=False)
        if list(arr.shape) != shape or arr.dtype.str != dtype:
            raise ValueError(f"{name}.npy has shape {arr.shape} {arr.dtype}, expected {shape} {dtype}")
        arrays[name] = arr
    masks = {}
    if meta["masks"]:
        shape = tuple(arrays["ct"].shape)
        bits = np.unpackbits(arrays["masks"], axis=1, count=int(np.prod(shape))).view(bool)
        if bits.shape[0] != len(meta["masks"]):
            raise ValueError("masks.npy does not match the ROI list")
        masks = {n: bits[k].reshape(shape) for k, n in enumerate(meta["masks"])}
    return Patient(id=meta["id"], ct=arrays["ct"], spacing=tuple(meta["spacing"]), masks=masks,
                   dose=arrays.get("dose"), possible_dose_mask=arrays.get("possible_dose_mask"),
                   origin=tuple(meta["origin"]), direction=np.asarray(meta["direction"]),
                   prescriptions=meta["prescriptions"], meta=meta["meta"])


def cached_load(src: str | os.PathLike, fmt: str, reader: Callable[[Path], Patient]) -> Patient:
    """``reader(src)`` through the cache: a hit loads the ``.npy`` files, a miss parses and stores.

    A corrupt entry is logged, removed and rebuilt; an unwritable cache only logs a warning.
    """
    src = Path(src)
    entry = entry_dir(src, fmt)
    if (entry / "patient.json").is_file():
        try:
            patient = read_entry(entry)
            if "source" in patient.meta:
                # The key is the *resolved* path; the stored source is the path as the first reader was given
                # it, maybe relative to another working directory. Files next to the patient (the float64
                # dose.csv re-read for exact OpenKBP scores) are found through the path given now.
                patient.meta["source"] = str(src)
            logger.debug("cache hit for %s (%s)", src, entry)
            return patient
        except Exception as exc:  # noqa: BLE001 - any failure means a corrupt entry
            logger.warning("ignoring corrupt cache entry %s (%s); rebuilding", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
    patient = reader(src)
    try:
        write_entry(patient, entry)
    except OSError as exc:
        logger.log(logging.WARNING, "could not write cache entry %s (%s)", entry, exc)
    return patient


def clear_cache() -> int:
    """Remove every cached patient; return how many entries were removed."""
    root = cache_root() / "patients"
    if not root.is_dir():
        return 0
    n = 0
    for p in root.iterdir():
        shutil.rmtree(p, ignore_errors=True)
        n += 1
    return n
