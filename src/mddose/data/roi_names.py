"""ROI names: map the many spellings found in DICOM RTSTRUCTs onto mddose's names.

Names are compared after :func:`normalise_roi_name` (lower case, every character other than a
letter or digit removed), so ``"Parotid_R"``, ``"parotid r"`` and ``"PAROTID-R"`` are the same key.

* :data:`DEFAULT_ROI_MAP` — normalised DICOM name → mddose name, for the OpenKBP head-and-neck names
  and common thoracic names. A user table (``roi_map``) is merged over it; its keys are normalised
  the same way, and a value of ``None`` (or ``""``) drops that ROI.
* Target names ``PTV<number>`` (``PTV70``, ``ptv_63``, ``PTV 56.5``) become ``PTV<number>``;
  :func:`prescription_from_name` reads the number as the prescription in Gy (numbers above 150 are
  taken as cGy: ``PTV7000`` → 70 Gy).
* Unknown names are kept as they are (surrounding white space stripped).
"""

from __future__ import annotations

import re
from typing import Mapping

#: mddose's name of the body outline (also the default possible-dose mask).
BODY = "Body"
#: ROI name used to store a patient's possible-dose mask in an RTSTRUCT (round trip of mddose's own files).
POSSIBLE_DOSE_ROI = "PossibleDoseMask"

_SYNONYMS: dict[str, tuple[str, ...]] = {
    "Brainstem": ("Brainstem", "Brain_Stem", "BrainStem_PRV0", "Brain stem"),
    "SpinalCord": ("SpinalCord", "Spinal_Cord", "Cord", "Spinal Cord", "SpinalCanal_cord", "Medulla"),
    "RightParotid": ("RightParotid", "Parotid_R", "R_Parotid", "Parotid_Rt", "Rt_Parotid", "ParotidRight",
                     "Right Parotid"),
    "LeftParotid": ("LeftParotid", "Parotid_L", "L_Parotid", "Parotid_Lt", "Lt_Parotid", "ParotidLeft",
                    "Left Parotid"),
    "Esophagus": ("Esophagus", "Oesophagus", "Esophagus_NOS"),
    "Larynx": ("Larynx",),
    "Mandible": ("Mandible", "Bone_Mandible"),
    "LungL": ("Lung_L", "LungL", "Left Lung", "LeftLung", "L_Lung", "Lung_Lt", "Lt_Lung", "Lung Left"),
    "LungR": ("Lung_R", "LungR", "Right Lung", "RightLung", "R_Lung", "Lung_Rt", "Rt_Lung", "Lung Right"),
    "Lungs": ("Lungs", "Lung", "Lung_Total", "Total Lung", "Lungs_Total", "Lung_Both", "Lungs-GTV",
              "Lung_L+R"),
    "Heart": ("Heart", "Heart_NOS", "Pericardium"),
    BODY: ("Body", "External", "Outline", "Skin", "BODY", "Patient", "Ext", "External_ROI"),
    POSSIBLE_DOSE_ROI: ("PossibleDoseMask", "possible_dose_mask"),
    "PTV": ("PTV",),
    "CTV": ("CTV",),
    "GTV": ("GTV",),
}

_PTV_RE = re.compile(r"^ptv(\d+(?:[.,]\d+)?)(?:gy)?$")


def normalise_roi_name(name: str) -> str:
    """The comparison key of an ROI name: lower case, letters and digits only (``"Parotid_R"`` → ``"parotidr"``)."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


#: Normalised DICOM name → mddose name (see the module docstring).
DEFAULT_ROI_MAP: dict[str, str] = {
    normalise_roi_name(alias): target for target, aliases in _SYNONYMS.items() for alias in aliases
}


def _ptv_number(name: str) -> str | None:
    """The number of a ``PTV<number>`` name as written (``"ptv_56.5"`` → ``"56.5"``), else None."""
    key = re.sub(r"[^0-9a-z.,]", "", str(name).lower())
    m = _PTV_RE.match(key)
    return m.group(1).replace(",", ".") if m else None


def map_roi_name(name: str, roi_map: Mapping[str, str | None] | None = None) -> str | None:
    """The mddose name of DICOM ROI ``name``; None if the user table drops it.

    Order: the user's ``roi_map`` (normalised keys), then :data:`DEFAULT_ROI_MAP`, then the
    ``PTV<number>`` rule, else ``name`` itself (stripped).
    """
    key = normalise_roi_name(name)
    if roi_map:
        user = {normalise_roi_name(k): v for k, v in roi_map.items()}
        if key in user:
            return user[key] or None
    if key in DEFAULT_ROI_MAP:
        return DEFAULT_ROI_MAP[key]
    number = _ptv_number(name)
    if number is not None:
        return f"PTV{number}"
    return str(name).strip()


def prescription_from_name(name: str) -> float | None:
    """Prescription (Gy) encoded in a target name: ``"PTV70"`` → 70.0, ``"PTV7000"`` → 70.0 (cGy), else None."""
    number = _ptv_number(name)
    if number is None:
        return None
    value = float(number)
    if value <= 0:
        return None
    return value / 100.0 if value > 150 else value

