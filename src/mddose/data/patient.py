"""The patient contract — written once, used everywhere.

A :class:`Patient` holds one planning case on a regular voxel grid:

* **Axis order** of every 3D array is ``(z, y, x)``:

  - axis 0 (``z``) runs along the patient's superior–inferior axis, index increasing towards
    **superior** (DICOM/LPS +z; slices sorted by increasing ImagePositionPatient z);
  - axis 1 (``y``) is the image row, index increasing towards **posterior** (LPS +y);
  - axis 2 (``x``) is the image column, index increasing towards the patient's **left** (LPS +x).

  A transverse image ``patient.ct[k]`` therefore shows the patient as radiologists do (anterior at
  the top, patient's right on the viewer's left). Readers convert to this at the boundary.
* **Units**: CT in Hounsfield units (float32), dose in Gy (float32), spacing and origin in mm.
* ``spacing`` is ``(sz, sy, sx)`` in mm, in array-axis order.
* ``origin`` is the LPS position ``(x, y, z)`` in mm of the centre of voxel ``[0, 0, 0]``
  (DICOM ImagePositionPatient order).
* ``direction`` is a 3×3 matrix whose columns are the LPS unit vectors along increasing array
  index of ``x`` (column 0), ``y`` (column 1) and ``z`` (column 2) — SimpleITK's convention. The
  identity means an axial, head-first-supine grid.
* ``masks`` maps ROI name → bool array; ``possible_dose_mask`` (bool) marks voxels that may receive
  dose (OpenKBP's definition); ``dose`` is optional (absent for a patient to be predicted).
* ``id`` is a **safe file-name component** (outputs are named after it, e.g. ``pred/<id>.csv``):
  1–128 characters from ``A–Z a–z 0–9 . _ -``, not starting with ``.`` (so never ``..``, a path or a
  hidden file). :meth:`Patient.validate` refuses any other id; readers turn an unsafe id read from a
  user file (or an unsafe folder name) into a safe one with :func:`safe_id` and log what they did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from mddose.errors import MddoseError

#: The target ROI names of the OpenKBP data, with their prescriptions (Gy).
OPENKBP_TARGETS: dict[str, float] = {"PTV70": 70.0, "PTV63": 63.0, "PTV56": 56.0}
#: The organ-at-risk ROI names of the OpenKBP data.
OPENKBP_OARS: tuple[str, ...] = (
    "Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible",
)

#: The longest patient id (a file-name component: leaves room for suffixes within 255 bytes).
MAX_ID_LENGTH = 128
_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,%d}" % (MAX_ID_LENGTH - 1))
_ID_BAD_CHAR = re.compile(r"[^A-Za-z0-9._-]")


def is_safe_id(value: object) -> bool:
    """True if ``value`` is a str usable as one file-name component (see the module docstring)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def safe_id(value: object) -> str:
    """``value`` as a safe id: each character outside ``A–Z a–z 0–9 . _ -`` and each leading ``.`` becomes
    ``_``, then cut to :data:`MAX_ID_LENGTH`; ``""`` if nothing is left (the caller picks a fallback).

    ``"../../x"`` → ``"___.._x"``, ``"/etc/passwd"`` → ``"_etc_passwd"``, ``"Pat 1"`` → ``"Pat_1"``.
    Safe ids are returned unchanged.
    """
    text = _ID_BAD_CHAR.sub("_", str(value))
    stripped = text.lstrip(".")
    return ("_" * (len(text) - len(stripped)) + stripped)[:MAX_ID_LENGTH]


@dataclass
class Patient:
    """One patient on a regular grid; see the module docstring for the contract.

    Attributes:
        id: patient identifier (e.g. ``"pt_1"``), a safe file-name component (:func:`is_safe_id`).
        ct: (Z, Y, X) float32, Hounsfield units.
        spacing: (sz, sy, sx) voxel size in mm, all > 0.
        masks: ROI name → (Z, Y, X) bool.
        dose: (Z, Y, X) float32 Gy, finite and ≥ 0, or None.
        possible_dose_mask: (Z, Y, X) bool, or None (then every voxel counts).
        origin: LPS (x, y, z) mm of voxel [0, 0, 0].
        direction: (3, 3) float64, columns = LPS directions of array axes x, y, z.
        prescriptions: target ROI name → prescription dose in Gy (targets are the keys).
        meta: free-form provenance (source path, DICOM UIDs, ...).
    """

    id: str
    ct: np.ndarray
    spacing: tuple[float, float, float]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    dose: np.ndarray | None = None
    possible_dose_mask: np.ndarray | None = None
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    prescriptions: dict[str, float] = field(default_factory=lambda: dict(OPENKBP_TARGETS))
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ct = np.ascontiguousarray(self.ct, dtype=np.float32)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64)
        self.masks = {str(k): np.ascontiguousarray(v, dtype=bool) for k, v in self.masks.items()}
        if self.dose is not None:
            self.dose = np.ascontiguousarray(self.dose, dtype=np.float32)
        if self.possible_dose_mask is not None:
            self.possible_dose_mask = np.ascontiguousarray(self.possible_dose_mask, dtype=bool)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate_id(self) -> None:
        """Raise :class:`MddoseError` unless ``id`` is a safe file-name component (writers call this: ``id``
        may have been reassigned since construction)."""
        if not is_safe_id(self.id):
            raise MddoseError(f"patient id {self.id!r} is not a safe file name (1-{MAX_ID_LENGTH} characters "
                              "from A-Z a-z 0-9 . _ -, not starting with '.')")

    def validate(self) -> None:
        """Raise :class:`MddoseError` naming the patient and the problem if the contract is broken."""
        self.validate_id()
        where = f"patient {self.id}"
        if self.ct.ndim != 3:
            raise MddoseError(f"{where}: CT must be 3D (z, y, x), got shape {self.ct.shape}")
        if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise MddoseError(f"{where}: spacing must be three positive finite numbers, got {self.spacing}")
        if len(self.origin) != 3 or not all(np.isfinite(self.origin)):
            raise MddoseError(f"{where}: origin must be three finite numbers, got {self.origin}")
        if self.direction.shape != (3, 3) or not np.all(np.isfinite(self.direction)):
            raise MddoseError(f"{where}: direction must be a finite 3x3 matrix")
        if not np.all(np.isfinite(self.ct)):
            raise MddoseError(f"{where}: CT contains NaN or infinite values")
        shape = self.ct.shape
        for name, m in self.masks.items():
            if m.shape != shape:
                raise MddoseError(f"{where}: mask {name!r} has shape {m.shape}, CT has {shape}")
        if self.possible_dose_mask is not None and self.possible_dose_mask.shape != shape:
            raise MddoseError(
                f"{where}: possible-dose mask has shape {self.possible_dose_mask.shape}, CT has {shape}")
        if self.dose is not None:
            if self.dose.shape != shape:
                raise MddoseError(f"{where}: dose has shape {self.dose.shape}, CT has {shape}")
            if not np.all(np.isfinite(self.dose)):
                raise MddoseError(f"{where}: dose contains NaN or infinite values")
            if self.dose.size and float(self.dose.min()) < 0:
                raise MddoseError(f"{where}: dose contains negative values (min {float(self.dose.min()):g} Gy)")
        for name, rx in self.prescriptions.items():
            if not (np.isfinite(rx) and rx > 0):
                raise MddoseError(f"{where}: prescription of {name!r} must be positive, got {rx}")

    # ------------------------------------------------------------------ conveniences
    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape (Z, Y, X)."""
        return tuple(self.ct.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_cc(self) -> float:
        """Volume of one voxel in cm³ (cc)."""
        sz, sy, sx = self.spacing
        return sz * sy * sx / 1000.0

    @property
    def targets(self) -> list[str]:
        """Target ROI names present in ``masks`` (those with a prescription), highest dose first."""
        present = [n for n in self.prescriptions if n in self.masks]
        return sorted(present, key=lambda n: -self.prescriptions[n])

    @property
    def oars(self) -> list[str]:
        """Non-target ROI names present in ``masks``."""
        return [n for n in self.masks if n not in self.prescriptions]

    def dose_mask(self) -> np.ndarray:
        """(Z, Y, X) bool: the possible-dose mask, or all-true if there is none."""
        if self.possible_dose_mask is not None:
            return self.possible_dose_mask
        return np.ones(self.shape, dtype=bool)

    def affine(self) -> np.ndarray:
        """4×4 LPS affine mapping the index ``(x, y, z)`` (i.e. reversed array axes) to mm."""
        sz, sy, sx = self.spacing
        aff = np.eye(4)
        aff[:3, :3] = self.direction @ np.diag([sx, sy, sz])
        aff[:3, 3] = self.origin
        return aff

    def with_dose(self, dose: np.ndarray | None, id: str | None = None) -> "Patient":
        """A shallow copy with another dose (e.g. a prediction); arrays are shared, not copied."""
        return Patient(
            id=self.id if id is None else id, ct=self.ct, spacing=self.spacing, masks=dict(self.masks),
            dose=dose, possible_dose_mask=self.possible_dose_mask, origin=self.origin,
            direction=self.direction, prescriptions=dict(self.prescriptions), meta=dict(self.meta),
        )

    def roi_volume_cc(self, name: str) -> float:
        """Volume of ROI ``name`` in cc."""
        return float(self.masks[name].sum()) * self.voxel_volume_cc

    def summary(self) -> dict:
        """JSON-ready summary: id, shape, spacing, rois (voxels, cc), dose (max, mean per target) or None."""
        rois = {n: {"voxels": int(m.sum()), "cc": float(m.sum()) * self.voxel_volume_cc}
                for n, m in self.masks.items()}
        dose = None
        if self.dose is not None:
            dose = {"max": float(self.dose.max()) if self.dose.size else 0.0,
                    "mean": float(self.dose[self.dose_mask()].mean()) if self.dose_mask().any() else 0.0,
                    "mean_in_targets": {t: float(self.dose[self.masks[t]].mean())
                                        for t in self.targets if self.masks[t].any()}}
        return {"id": self.id, "shape": list(self.shape), "spacing": list(self.spacing), "rois": rois,
                "dose": dose}


def prescription_map(masks: Mapping[str, np.ndarray], prescriptions: Mapping[str, float],
                     shape: tuple[int, ...]) -> np.ndarray:
    """(…) float32: each voxel's highest prescription among the targets covering it, 0 elsewhere."""
    out = np.zeros(shape, dtype=np.float32)
    for name, rx in sorted(prescriptions.items(), key=lambda kv: kv[1]):
        if name in masks:
            out[masks[name]] = rx
    return out
