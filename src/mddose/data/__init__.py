"""Patients in and out: the patient model, readers/writers by format, phantoms, the slice dataset."""

from mddose.data.patient import OPENKBP_OARS, OPENKBP_TARGETS, Patient

__all__ = ["OPENKBP_OARS", "OPENKBP_TARGETS", "Patient"]
