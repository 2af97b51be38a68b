"""On-disk cache of computed priors, keyed by what they are computed from.

Layout: :func:`mddose.utils.config.cache_root` ``/priors/<key>.npz`` (uncompressed; one array per channel).

**Key** — SHA-256 over a version, the spec (:meth:`PriorsSpec.to_dict`), the patient arrangement, and the
patient content the priors read: CT bytes, shape, spacing, direction, prescriptions, the target masks and
the dose region. Content, not the source path: priors of a patient read from two formats or
augmented on the fly are never confused, and hashing ~10 MB costs ~20 ms, small beside the ~1 s compute.
Written atomically (temporary sibling + ``os.replace``); an unreadable entry is logged, removed and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from mddose.data.patient import Patient
from mddose.utils.config import cache_root
from mddose.utils.log import logger

#: Bump when the priors' definition changes.
PRIORS_CACHE_VERSION = 1


def priors_key(patient: Patient, spec, arrangement=None) -> str:
    """Hex key of ``compute_priors(patient, spec, arrangement)`` (see the module docstring)."""
    from mddose.data.priors import dose_region, target_levels

    h = hashlib.sha256()
    arr = arrangement.to_dict() if arrangement is not None else None
    h.update(json.dumps([PRIORS_CACHE_VERSION, spec.to_dict(), arr, list(patient.shape), list(patient.spacing),
                         patient.direction.tolist(), sorted(patient.prescriptions.items())]).encode())
    h.update(np.ascontiguousarray(patient.ct).tobytes())
    for name in target_levels(patient):
        h.update(name.encode() + b"\0")
        if name in patient.masks:
            h.update(np.packbits(patient.masks[name]).tobytes())
    h.update(b"region\0" + np.packbits(dose_region(patient)).tobytes())
    return h.hexdigest()[:32]


def cached_priors(patient: Patient, spec=None, arrangement=None, root: str | os.PathLike | None = None
                  ) -> dict[str, np.ndarray]:
    """:func:`~mddose.data.priors.compute_priors` through the cache (same result, same channel order)."""
    from mddose.data.priors import PriorsSpec, compute_priors

    spec = spec or PriorsSpec()
    folder = Path(root) if root is not None else cache_root() / "priors"
    path = folder / f"{priors_key(patient, spec, arrangement)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                order = json.loads(str(z["__order__"]))
                out = {n: z[n] for n in order}
            if all(a.shape == patient.shape for a in out.values()):
                return out
            raise ValueError("shape mismatch")
        except Exception as exc:  # noqa: BLE001 - any failure means a corrupt entry
            logger.warning("ignoring corrupt priors cache entry %s (%s); recomputing", path, exc)
            path.unlink(missing_ok=True)
    out = compute_priors(patient, spec, arrangement)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, __order__=np.asarray(json.dumps(list(out))), **out)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        logger.warning("could not write priors cache entry %s (%s)", path, exc)
    return out
