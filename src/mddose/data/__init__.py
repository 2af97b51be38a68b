"""Patients in and out. One room per part:

* :mod:`~mddose.data.patient` — the :class:`Patient` contract (axes, units, safe ids);
* :mod:`~mddose.data.io` — format detection, :func:`~mddose.data.io.load_patient`,
  :func:`~mddose.data.io.load_patients` (batches that go on past bad patients), saving, conversion;
* :mod:`~mddose.data.formats` — the file formats: OpenKBP, NIfTI, DICOM-RT (a package);
* :mod:`~mddose.data.cache` — the on-disk cache of parsed patients;
* :mod:`~mddose.data.inspection` — what ``mddose data inspect`` reports (summary, problems);
* :mod:`~mddose.data.roi_names` — ROI name mapping;
* :mod:`~mddose.data.phantom` — synthetic phantoms;
* :mod:`~mddose.data.inputs` — model inputs: 2D slices (with their cache and dataset) and 3D volumes.
"""

from mddose.data.patient import OPENKBP_OARS, OPENKBP_TARGETS, Patient

__all__ = ["OPENKBP_OARS", "OPENKBP_TARGETS", "Patient"]
