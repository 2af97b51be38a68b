"""The beam arrangement of a plan: coplanar gantry angles, their convention, and an RTPLAN reader.

**Convention** (IEC 61217). Angles are gantry angles in degrees for a **head-first-supine (HFS)** patient:
0° = the source is anterior and the beam travels anterior → posterior; angles increase **clockwise as seen
from the foot of the couch** (looking at the gantry), so 90° = the source on the patient's **left**, beam
travelling left → right, 180° = posterior, 270° = the patient's right. An RTPLAN of another patient
position is converted to this HFS-equivalent angle (FFS: −θ, HFP: θ + 180°, FFP: 180° − θ).

**In memory** (the patient contract, :mod:`mddose.data.patient`: array ``y`` index increases towards
posterior, ``x`` towards the patient's left; an identity ``direction``), the unit vector from the source
towards the isocentre, in mm along the array axes ``(y, x)``, is::

    beam(θ) = (cos θ, −sin θ)        0° → +y (posterior), 90° → −x (towards the patient's right)

and the source sits at ``isocentre − SAD · beam(θ)``. On a transverse image shown as radiologists do
(anterior at the top, the patient's right on the viewer's left, i.e. seen from the feet) the 0° field
enters at the top and the 90° field from the viewer's right. A grid whose ``direction`` flips or swaps
the in-plane axes is handled through ``direction`` (:func:`beam_vectors`); a non-axial grid is refused.
OpenKBP folders are read into this contract by :mod:`mddose.data.formats.openkbp` (checked there against
the anatomy of every shared patient); ``results/priors/README.md`` shows the 0° field entering the face.

:mod:`mddose.data.phantom` (its ``scipy.ndimage.rotate`` by θ, beam along +y of the rotated frame) follows
the same convention: its 90° beam enters from the patient's left (``tests/data/test_priors.py``).

Rotating the grid in the axial plane by ``α`` clockwise as seen from the feet (what
:func:`mddose.data.inputs.volume.rotate_axial` does for ``α > 0``) moves field ``θ`` to ``θ + α``; an
x (left–right) flip maps ``θ`` to ``−θ``, a y (antero-posterior) flip to ``180° − θ``, a z flip leaves it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mddose.errors import MddoseError
from mddose.utils.log import logger

#: OpenKBP's class solution: nine equispaced coplanar 6 MV fields.
OPENKBP_GANTRY_DEG: tuple[float, ...] = tuple(40.0 * k for k in range(9))
#: Source–axis distance of a linac (mm).
DEFAULT_SAD_MM = 1000.0
#: Couch / gantry-pitch angles within this many degrees of 0 count as coplanar.
COPLANAR_TOLERANCE_DEG = 0.5
#: HFS-equivalent angle of gantry angle θ for each supported patient position.
_POSITION = {"HFS": lambda t: t, "FFS": lambda t: -t, "HFP": lambda t: t + 180.0, "FFP": lambda t: 180.0 - t}


def _norm(angle: float) -> float:
    """``angle`` in [0, 360), with −0 and 360 − ε folded onto 0."""
    a = float(angle) % 360.0
    return 0.0 if a >= 360.0 - 1e-9 or a == 0.0 else a


@dataclass(frozen=True)
class BeamArrangement:
    """Coplanar fields of a plan.

    Attributes:
        gantry_deg: HFS-equivalent IEC gantry angles (degrees, normalised to [0, 360)), one per field, in
            channel order; at least one, all finite.
        sad_mm: source–axis distance (mm) for the inverse-square law and the beam divergence.
        source: where the arrangement came from ("config", "openkbp", or an RTPLAN path).
    """

    gantry_deg: tuple[float, ...] = OPENKBP_GANTRY_DEG
    sad_mm: float = DEFAULT_SAD_MM
    source: str = "config"

    def __post_init__(self) -> None:
        angles = self.gantry_deg
        if isinstance(angles, (str, bytes)) or not isinstance(angles, (Sequence, np.ndarray)):
            raise MddoseError(f"inputs.priors.beams: expected a list of gantry angles (degrees), got {angles!r}")
        if len(angles) == 0:
            raise MddoseError("inputs.priors.beams: the beam arrangement has no field (give at least one "
                              "gantry angle)")
        out = []
        for a in angles:
            try:
                v = float(a)
            except (TypeError, ValueError):
                raise MddoseError(f"inputs.priors.beams: gantry angle {a!r} is not a number") from None
            if isinstance(a, bool) or not math.isfinite(v):
                raise MddoseError(f"inputs.priors.beams: gantry angle {a!r} is not a finite number")
            out.append(_norm(v))
        if len(set(round(a, 6) for a in out)) != len(out):
            raise MddoseError(f"inputs.priors.beams: gantry angles {out} repeat a field")
        sad = self.sad_mm
        if isinstance(sad, bool) or not isinstance(sad, (int, float)) or not (math.isfinite(sad) and sad > 0):
            raise MddoseError(f"inputs.priors.sad_mm must be a positive number of mm, got {sad!r}")
        object.__setattr__(self, "gantry_deg", tuple(out))
        object.__setattr__(self, "sad_mm", float(sad))

    @classmethod
    def openkbp_default(cls) -> "BeamArrangement":
        """OpenKBP's nine equispaced coplanar fields 0°, 40°, …, 320° (SAD 1000 mm)."""
        return cls(OPENKBP_GANTRY_DEG, DEFAULT_SAD_MM, "openkbp")

    @classmethod
    def from_config(cls, value: Any) -> "BeamArrangement":
        """From a config value: None/"openkbp" (the default), a list of angles, or a dict with ``gantry_deg``
        (and optionally ``sad_mm``)."""
        if value is None or value == "openkbp":
            return cls.openkbp_default()
        if isinstance(value, BeamArrangement):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"gantry_deg", "sad_mm", "source"}
            if unknown:
                raise MddoseError(f"inputs.priors.beams: unknown key(s) {sorted(unknown)}")
            if "gantry_deg" not in value:
                raise MddoseError("inputs.priors.beams: missing 'gantry_deg' (a list of gantry angles)")
            return cls(value["gantry_deg"], value.get("sad_mm", DEFAULT_SAD_MM), str(value.get("source", "config")))
        return cls(value)

    def to_dict(self) -> dict:
        """JSON-ready form, read back by :meth:`from_config`."""
        return {"gantry_deg": list(self.gantry_deg), "sad_mm": self.sad_mm, "source": self.source}

    def channel_names(self) -> list[str]:
        """One channel name per field: ``"beam_<angle>"`` (``beam_0``, ``beam_40``, ``beam_12.5``)."""
        return [f"beam_{a:g}" for a in self.gantry_deg]

    def transformed(self, *, flip_x: bool = False, flip_y: bool = False, rotate_deg: float = 0.0) -> "BeamArrangement":
        """The angles after an x flip (θ → −θ), a y flip (θ → 180° − θ), then an axial rotation by
        ``rotate_deg`` (θ → θ + α); same order of fields."""
        return BeamArrangement(tuple(map_angle(a, flip_x=flip_x, flip_y=flip_y, rotate_deg=rotate_deg)
                                     for a in self.gantry_deg), self.sad_mm, self.source)


def map_angle(theta: float, *, flip_x: bool = False, flip_y: bool = False, rotate_deg: float = 0.0) -> float:
    """Where field ``theta`` goes when the grid is flipped (x, then y) and rotated by ``rotate_deg``."""
    t = float(theta)
    if flip_x:
        t = -t
    if flip_y:
        t = 180.0 - t
    return _norm(t + float(rotate_deg))


def beam_vectors(theta_deg: float, direction: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of field ``theta_deg`` in array-axis mm coordinates ``(y, x)``.

    Returns:
        ``(beam, lateral)``: (2,) float64 each; ``beam`` points from the source towards the isocentre,
        ``lateral`` ⟂ ``beam`` (the beam's-eye-view "u" axis; ``(sin θ, cos θ)`` on an identity grid, so
        +x, the patient's left, at 0°).
    Raises:
        MddoseError if ``direction`` (3×3, columns = LPS directions of array x, y, z) is not an axial grid.
    """
    t = math.radians(float(theta_deg))
    lps = np.array([-math.sin(t), math.cos(t)])           # (x, y) in LPS: 0° → +y (posterior)
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    if d.shape != (3, 3) or abs(abs(d[2, 2]) - 1.0) > 1e-3 or np.abs(d[:2, 2]).max() > 1e-3 \
            or np.abs(d[2, :2]).max() > 1e-3:
        raise MddoseError("priors: the patient grid is not axial (direction matrix); resample it first")
    a = d[:2, :2]                                           # LPS (x, y) of array axes x (col 0) and y (col 1)
    vx, vy = np.linalg.solve(a, lps)                        # components along array x and y
    beam = np.array([vy, vx]) / math.hypot(vx, vy)
    lateral = np.array([-beam[1], beam[0]])                 # (y, x): 0° → +x
    return beam, lateral


# ------------------------------------------------------------------------------------------------ RTPLAN
def _float(ds, key: str, default: float | None = None) -> float | None:
    v = ds.get(key, None)
    if v is None or v == "":
        return default
    return float(v)


def _read_plan(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, TypeError) as exc:
        raise MddoseError(f"not a readable DICOM RTPLAN ({exc.__class__.__name__})", path) from None
    if str(ds.get("Modality", "")).upper() != "RTPLAN":
        raise MddoseError(f"not an RTPLAN (Modality {ds.get('Modality', '')!r})", path)
    return ds


def from_rtplan(path: str | os.PathLike, sad_mm: float | None = None) -> BeamArrangement:
    """The coplanar fields of a DICOM RTPLAN (``BeamSequence``, or ``IonBeamSequence``).

    Treatment beams only (``TreatmentDeliveryType`` SETUP is skipped). A static field gives its first
    control point's ``GantryAngle``; an arc (``GantryRotationDirection`` CW/CC) gives its control points'
    angles, one per 10° of arc. The patient position (``PatientSetupSequence``, default HFS) converts the
    angles to the HFS-equivalent convention of this module. ``sad_mm``: the beams' SourceAxisDistance unless
    given.

    Raises:
        MddoseError (one line, naming the file): not readable, not an RTPLAN, no treatment beam, a
        non-coplanar field (couch or gantry-pitch angle ≠ 0), an angle that is not a finite number, or an
        unsupported patient position.
    """
    path = Path(path)
    return _beams_of(_read_plan(path), path, sad_mm)


def _beams_of(ds, path: Path, sad_mm: float | None) -> BeamArrangement:
    setups = ds.get("PatientSetupSequence", [])
    position = str(setups[0].get("PatientPosition", "HFS") or "HFS").upper() if setups else "HFS"
    if position not in _POSITION:
        raise MddoseError(f"patient position {position} is not supported by the beam priors (HFS, FFS, HFP, "
                          "FFP)", path)
    beams = list(ds.get("BeamSequence", [])) or list(ds.get("IonBeamSequence", []))
    angles: list[float] = []
    sads: list[float] = []
    try:
        for b in beams:
            if str(b.get("TreatmentDeliveryType", "TREATMENT")).upper() == "SETUP":
                continue
            name = str(b.get("BeamName", b.get("BeamNumber", "?")))
            cps = list(b.get("ControlPointSequence", []))
            if not cps:
                raise MddoseError(f"beam {name!r} has no control point (no gantry angle)", path)
            first = cps[0]
            couch = _float(first, "PatientSupportAngle", 0.0)
            pitch = _float(first, "GantryPitchAngle", 0.0)
            for what, v in (("couch", couch), ("gantry pitch", pitch)):
                if not math.isfinite(v):
                    raise MddoseError(f"beam {name!r}: {what} angle {v} is not a finite number", path)
                if min(abs(v) % 360.0, 360.0 - abs(v) % 360.0) > COPLANAR_TOLERANCE_DEG:
                    raise MddoseError(f"beam {name!r} is non-coplanar ({what} angle {v:g}°); the beam priors need "
                                      "coplanar fields: set inputs.priors.beams to the coplanar arrangement to use "
                                      "instead", path)
            g = _float(first, "GantryAngle")
            if g is None or not math.isfinite(g):
                raise MddoseError(f"beam {name!r}: gantry angle {first.get('GantryAngle', None)!r} is not a finite "
                                  "number", path)
            arc = str(first.get("GantryRotationDirection", "NONE")).upper() in ("CW", "CC")
            if arc:
                pts = [_float(c, "GantryAngle") for c in cps if c.get("GantryAngle", None) not in (None, "")]
                if not all(math.isfinite(p) for p in pts):
                    raise MddoseError(f"arc {name!r}: a gantry angle is not a finite number", path)
                kept: list[float] = []
                for p in pts:
                    if not kept or min(abs(p - k) % 360.0 for k in kept) >= 10.0:
                        kept.append(p)
                angles.extend(kept)
            else:
                angles.append(g)
            s = _float(b, "SourceAxisDistance")
            if s is not None and math.isfinite(s) and s > 0:
                sads.append(s)
    except (TypeError, ValueError) as exc:
        raise MddoseError(f"malformed beam ({exc})", path) from None
    if not angles:
        raise MddoseError("the RTPLAN has no treatment beam (BeamSequence empty); give the arrangement in "
                          "inputs.priors.beams instead", path)
    conv = _POSITION[position]
    hfs = []
    for a in angles:
        v = _norm(conv(a))
        if not any(abs(v - h) < 1e-6 for h in hfs):
            hfs.append(v)
    sad = float(sad_mm) if sad_mm is not None else (float(np.median(sads)) if sads else DEFAULT_SAD_MM)
    return BeamArrangement(tuple(hfs), sad, str(path))


def patient_rtplan(meta: dict) -> Path | None:
    """The RTPLAN file a patient was read with (``patient.meta["dicom"]["rtplan"]``, set by the DICOM reader),
    or None."""
    path = (meta.get("dicom") or {}).get("rtplan") if isinstance(meta, dict) else None
    return Path(path) if path else None


def arrangement_for(rtplan: str | os.PathLike | None, configured: BeamArrangement, *,
                    strict: bool = True) -> BeamArrangement:
    """The arrangement of a patient: its RTPLAN's fields when it has one, else ``configured``.

    The beamless RTPLAN that mddose itself writes with a patient (label ``mddose``: prescriptions only)
    counts as no RTPLAN. With ``strict=False`` an RTPLAN whose beams can't be used (none, non-coplanar,
    malformed) logs one line saying so and that ``configured`` is used instead; with ``strict=True``
    (default) it raises that error.
    """
    if rtplan is None:
        return configured
    path = Path(rtplan)
    try:
        ds = _read_plan(path)
        if str(ds.get("RTPlanLabel", "")) == "mddose" and not (ds.get("BeamSequence") or ds.get("IonBeamSequence")):
            return configured
        return _beams_of(ds, path, None)
    except MddoseError as exc:
        if strict:
            raise
        logger.warning("%s; using the configured arrangement (%s) instead", exc,
                       ", ".join(f"{a:g}°" for a in configured.gantry_deg))
        return configured
