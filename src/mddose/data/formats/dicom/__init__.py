"""DICOM-RT in and out: CT series + RTSTRUCT + RTDOSE + RTPLAN (target prescriptions).

One module per part (import from them; this package re-exports nothing):

* :mod:`~mddose.data.formats.dicom.read` — :func:`read_dicom_patient` (conventions in its docstring);
* :mod:`~mddose.data.formats.dicom.write` — :func:`write_dicom_patient`, :func:`write_rtdose`, ...;
* :mod:`~mddose.data.formats.dicom.files` — finding and opening DICOM files (:func:`is_dicom_dir`);
* :mod:`~mddose.data.formats.dicom.geometry` — :class:`Grid` and the geometry attributes;
* :mod:`~mddose.data.formats.dicom.ct` — the CT series;
* :mod:`~mddose.data.formats.dicom.rtstruct` — RTSTRUCT checks and rasterisation;
* :mod:`~mddose.data.formats.dicom.dose` — RTDOSE reading and resampling;
* :mod:`~mddose.data.formats.dicom.rtplan` — RTPLAN prescriptions.

ROI names are mapped by :mod:`mddose.data.roi_names`.
"""
