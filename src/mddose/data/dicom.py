"""DICOM-RT in and out: CT series + RTSTRUCT + RTDOSE + RTPLAN (target prescriptions).

The implementation lives in :mod:`mddose.data.dicom_read` (reading, geometry, rasterisation;
conventions in its docstring), :mod:`mddose.data.dicom_dose` (RTDOSE reading and resampling), :mod:`mddose.data.dicom_write` (writing; conventions in
its docstring) and :mod:`mddose.data.roi_names` (ROI name mapping). This module re-exports the API.
"""

from __future__ import annotations

from mddose.data.dicom_dose import DoseGrid, read_rtdose, resample_dose
from mddose.data.dicom_read import (
    BODY_HU_THRESHOLD, Grid, fill_polygons, is_dicom_dir, plan_prescriptions, rasterise_rtstruct, read_ct_series,
    read_dicom_patient,
)
from mddose.data.dicom_write import (
    DicomRefs, dose_scaling, mask_contours, plan_targets, write_ct_series, write_dicom_patient, write_rtdose,
    write_rtplan, write_rtstruct,
)
from mddose.data.roi_names import DEFAULT_ROI_MAP, map_roi_name, normalise_roi_name, prescription_from_name

__all__ = [
    "BODY_HU_THRESHOLD", "DEFAULT_ROI_MAP", "DicomRefs", "DoseGrid", "Grid", "dose_scaling", "is_dicom_dir",
    "map_roi_name", "mask_contours", "normalise_roi_name", "plan_prescriptions", "plan_targets", "fill_polygons",
    "prescription_from_name", "rasterise_rtstruct", "read_ct_series", "read_dicom_patient", "read_rtdose",
    "resample_dose", "write_ct_series", "write_dicom_patient", "write_rtdose", "write_rtplan", "write_rtstruct",
]
