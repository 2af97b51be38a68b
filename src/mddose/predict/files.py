"""Writing predictions: one patient's dose (and uncertainty map) in a format, inside an output folder only."""

from __future__ import annotations

from pathlib import Path

from mddose.data.patient import Patient
from mddose.errors import MddoseError
from mddose.predict.patient import Prediction

#: Output formats of :func:`mddose.predict.batch.predict_to_dir`.
OUTPUT_FORMATS = ("openkbp", "nifti", "dicom")


def _output_path(out: Path, patient_id: str, *parts: str) -> Path:
    """``out/<parts with {id}>`` for one patient, refused unless it is a file name inside ``out``.

    Defence in depth (the patient contract already refuses unsafe ids): the id must be one plain path
    component and the path, symlinks resolved, must lie inside ``out``.
    """
    pid = str(patient_id)
    if pid in ("", ".", "..") or Path(pid).name != pid or "/" in pid or "\\" in pid or "\0" in pid:
        raise MddoseError(f"patient id {pid!r} is not a safe file name; refusing to write its prediction")
    path = out.joinpath(*(p.format(id=pid) for p in parts))
    root = out.resolve()
    real = path.resolve()
    if real != root and root not in real.parents:
        raise MddoseError(f"patient {pid}: {path} resolves to {real}, outside the output directory {root}; "
                          "refusing to write there")
    return path


#: format → paths (under the output directory) of the dose and of the uncertainty map; ``{id}`` = patient id
OUTPUT_LAYOUT = {
    "openkbp": (("{id}.csv",), ("uncertainty", "{id}.csv")),
    "nifti": (("{id}.nii.gz",), ("uncertainty", "{id}.nii.gz")),
    "dicom": (("{id}", "RTDOSE.dcm"), ("uncertainty", "{id}.nii.gz")),
}


def write_prediction(pred: Prediction, patient: Patient, out: Path, fmt: str) -> list[Path]:
    """Write one patient's prediction into ``out`` in format ``fmt``; returns the files written.

    Layout (:data:`OUTPUT_LAYOUT`): ``openkbp`` → ``out/<id>.csv`` (+ ``out/uncertainty/<id>.csv``);
    ``nifti`` → ``out/<id>.nii.gz`` (+ ``out/uncertainty/<id>.nii.gz``); ``dicom`` → ``out/<id>/RTDOSE.dcm``
    referencing the patient's CT (+ ``out/uncertainty/<id>.nii.gz``). Each file is written atomically.
    Every path is checked to be inside ``out`` before anything is written (:class:`MddoseError` otherwise).
    """
    if fmt not in OUTPUT_LAYOUT:
        raise MddoseError(f"--format: unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    out = Path(out)
    dose_parts, std_parts = OUTPUT_LAYOUT[fmt]
    dose_path = _output_path(out, pred.patient_id, *dose_parts)
    std_path = _output_path(out, pred.patient_id, *std_parts) if pred.std is not None else None
    if fmt == "openkbp":
        from mddose.data.formats.openkbp import write_dose_csv

        write_dose_csv(pred.dose, dose_path)
        if std_path is not None:
            write_dose_csv(pred.std, std_path)
    else:
        from mddose.data.formats.nifti import write_nifti_array

        if fmt == "nifti":
            write_nifti_array(pred.dose, dose_path, like=patient)
        else:
            from mddose.data.formats.dicom.write import write_rtdose

            dose_path.parent.mkdir(parents=True, exist_ok=True)
            write_rtdose(pred.dose, patient, dose_path)
        if std_path is not None:
            write_nifti_array(pred.std, std_path, like=patient)
    return [dose_path] if std_path is None else [dose_path, std_path]
