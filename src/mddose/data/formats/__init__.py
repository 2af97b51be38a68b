"""Patient file formats, one module (or package) each; :mod:`mddose.data.io` dispatches between them.

* :mod:`mddose.data.formats.openkbp` — OpenKBP sparse-CSV folders;
* :mod:`mddose.data.formats.nifti` — NIfTI folders (``ct.nii.gz``, ``masks/``, ``patient.json``);
* :mod:`mddose.data.formats.dicom` — DICOM-RT (CT series, RTSTRUCT, RTDOSE, RTPLAN), a package;
* :mod:`mddose.data.formats.common` — what every reader shares: regular-file checks (a FIFO must not
  hang a reader, a broken link or an unreadable file is one line) and the patient id of a folder.
"""
