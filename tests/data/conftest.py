"""Fixtures shared by the DICOM tests (test_dicom.py, test_dicom_plans.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    """(original patient, directory written, patient read back) of :func:`tests.data.test_dicom.make_patient`."""
    from mddose.data.formats.dicom.read import read_dicom_patient
    from mddose.data.formats.dicom.write import write_dicom_patient
    from tests.data.test_dicom import make_patient

    p = make_patient()
    d = tmp_path_factory.mktemp("dicom") / "pt"
    write_dicom_patient(p, d)
    return p, d, read_dicom_patient(d)
