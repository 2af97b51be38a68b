"""The one reader of prediction folders (mddose.evaluate.predictions): every format `mddose predict` writes,
read the same way by `evaluate`, `compare` and `report`; ambiguous or broken entries named, never guessed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mddose.cli.main import main
from mddose.errors import MddoseError
from mddose.evaluate import predictions as P
from tests.evaluate.test_figures import make_patient, make_prediction

FORMATS = ("openkbp", "nifti", "dicom")
IDS = ("pt_1", "pt_2")


@pytest.fixture(scope="module")
def patients():
    return [make_patient(pid, seed=i) for i, pid in enumerate(IDS)]


@pytest.fixture(scope="module")
def reference(patients, tmp_path_factory):
    """The synthetic patients saved as NIfTI patient folders (what `--reference` points to)."""
    from mddose.data.io import save_patient

    d = tmp_path_factory.mktemp("reference")
    for p in patients:
        save_patient(p, d / p.id, "nifti")
    return d


@pytest.fixture(scope="module")
def runs(patients, reference, tmp_path_factory):
    """format → a prediction folder written by `mddose predict`'s own writer (with uncertainty maps, a
    predict.json and an evaluation/ folder beside the predictions, which the reader must ignore)."""
    from mddose.predict import Prediction, write_prediction

    out = {}
    for fmt in FORMATS:
        d = tmp_path_factory.mktemp(f"pred-{fmt}")
        for p in patients:
            pred = make_prediction(p)
            write_prediction(Prediction(p.id, pred, np.abs(pred - p.dose) / 4), p, d, fmt)
        (d / "predict.json").write_text(json.dumps({"input": str(reference), "format": fmt}))
        (d / "evaluation").mkdir()
        (d / "evaluation" / "notes.csv").write_text(",data\n1,2\n")  # inside evaluation/: never a prediction
        out[fmt] = d
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_of_predict_is_found_and_read(runs, patients, fmt):
    folder = P.find_predictions(runs[fmt])
    assert list(folder.files) == list(IDS) and not folder.conflicts and not folder.problems(IDS)
    expected = {"openkbp": "{}.csv", "nifti": "{}.nii.gz", "dicom": "{}/RTDOSE.dcm"}[fmt]
    for p in patients:
        assert folder.files[p.id] == runs[fmt] / expected.format(p.id)
        pred = make_prediction(p)
        vol = P.read_volume(folder.files[p.id], p)
        tol = 1e-3 * float(pred.max()) if fmt == "dicom" else 1e-6  # RTDOSE stores scaled integers
        np.testing.assert_allclose(vol, pred, atol=tol)
        unc = P.find_uncertainty(runs[fmt], p.id)
        assert unc is not None and unc.parent.name == "uncertainty"
        np.testing.assert_allclose(P.read_volume(unc, p), np.abs(pred - p.dose) / 4, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_evaluate_accepts_every_format_of_predict(runs, reference, patients, fmt, capsys):
    """Issue 11: `mddose predict --format dicom` output was accepted by `report` but refused by `evaluate`."""
    from mddose.evaluate.records import evaluate_arrays

    js = runs[fmt].parent / f"{fmt}-summary.json"
    assert main(["evaluate", "--reference", str(reference), "--prediction", str(runs[fmt]), "--json", str(js),
                 "--csv", str(js.with_suffix(".csv"))]) == 0
    summary = json.loads(js.read_text())
    assert summary["patients"] == list(IDS) and summary["errors"] == [] and summary["unmatched_predictions"] == []
    exact = evaluate_arrays(patients, {p.id: make_prediction(p) for p in patients})
    assert summary["dose_score"] == pytest.approx(exact.dose_score, rel=1e-3 if fmt == "dicom" else 1e-6)


def test_compare_and_report_read_the_same_folders(runs, reference, tmp_path, capsys):
    assert main(["compare", *(str(runs[f]) for f in FORMATS), "--names", *FORMATS, "--reference",
                 str(reference), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert all(f"| {f}" in md for f in FORMATS)
    for fmt in FORMATS:  # the reference comes from predict.json
        out = tmp_path / f"{fmt}.html"
        assert main(["report", str(runs[fmt]), "--out", str(out), "--max-patients", "1"]) == 0
        text = out.read_text(encoding="utf-8")
        assert text.count('class="viewer"') == 1 and "Uncertainty (σ)" in text


# ---------------------------------------------------------------------------------------------- layouts
def test_folder_entries_are_sorted_out(tmp_path):
    run = tmp_path / "run"
    (run / "uncertainty").mkdir(parents=True)
    (run / "pt_10.csv").write_text(",data\n5,1.5\n")
    (run / "pt_2.nii.gz").write_bytes(b"")
    (run / "pt_3.npy").write_bytes(b"")
    (run / "pt_7").mkdir()
    (run / "pt_7" / "RTDOSE.dcm").write_bytes(b"")
    (run / "pt_8").mkdir()
    (run / "pt_8" / "dose.nii.gz").write_bytes(b"")
    (run / "pt_bin.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00binary")  # a broken prediction, not a table
    (run / "pt_4.csv").write_text(",data\n1,2\n")
    (run / "pt_4.nii.gz").write_bytes(b"")  # two predictions for pt_4
    (run / "pt_5.txt").write_text("x")  # unsupported suffix
    (run / "pt_6").mkdir()  # a folder without a prediction file
    (run / "pt_9.nii").symlink_to(run / "gone.nii")  # broken link
    (run / "per_patient.csv").write_text("patient,x\npt_1,1\n")  # other tables are ignored
    (run / "uncertainty" / "pt_2.npy").write_bytes(b"")
    (run / ".mddose-tmp.host.1.pt_11.csv.x.tmp").write_text(",data\n")  # a temporary: hidden
    (run / "predict.json").write_text("{}")
    folder = P.find_predictions(run)
    assert list(folder.files) == ["pt_2", "pt_3", "pt_7", "pt_8", "pt_10", "pt_bin"]
    assert folder.files["pt_8"] == run / "pt_8" / "dose.nii.gz"
    problems = folder.problems(["pt_4", "pt_5", "pt_6", "pt_9", "pt_2", "pt_99"])
    assert set(problems) == {"pt_4", "pt_5", "pt_6", "pt_9"}
    assert "several predictions" in problems["pt_4"] and "pt_4.csv" in problems["pt_4"] \
        and "pt_4.nii.gz" in problems["pt_4"]
    assert "unsupported prediction file" in problems["pt_5"] and str(run / "pt_5.txt") in problems["pt_5"]
    assert "without a prediction file" in problems["pt_6"]
    assert "broken symbolic link" in problems["pt_9"]
    assert all("\n" not in m for m in problems.values())


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_named_not_read(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "pt_1.csv").write_text(",data\n1,2\n")
    os.mkfifo(run / "pt_2.csv")
    folder = P.find_predictions(run)  # returns: the FIFO is never opened
    assert list(folder.files) == ["pt_1"] and "FIFO" in folder.problems(["pt_2"])["pt_2"]
    with pytest.raises(MddoseError, match="FIFO"):
        P.read_volume(run / "pt_2.csv", make_patient("pt_2"))


@pytest.mark.parametrize("case", ["missing", "file", "empty"])
def test_no_prediction_folder(tmp_path, case):
    path = tmp_path / "run"
    if case == "file":
        path.write_text("x")
    elif case == "empty":
        path.mkdir()
        (path / "readme.txt").write_text("nothing here")
    with pytest.raises(MddoseError, match="no such|not a directory|no predictions found"):
        P.find_predictions(path)


@pytest.mark.parametrize("rel", ["uncertainty/pt_1.csv", "uncertainty/pt_1.nii.gz", "uncertainty/pt_1_std.npy",
                                 "std/pt_1.npy", "pt_1_uncertainty.nii.gz", "uncertainty/pt_1/std.npy"])
def test_find_uncertainty_is_tolerant(tmp_path, rel):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_bytes(b"")
    assert P.find_uncertainty(tmp_path, "pt_1") == tmp_path / rel
    assert P.find_uncertainty(tmp_path, "pt_2") is None


@pytest.mark.parametrize("bad, message", [("shape", "differs from the reference grid"), ("negative", "negative"),
                                          ("nan", "NaN"), ("object", "must hold numbers"),
                                          ("suffix", "unsupported prediction file")])
def test_read_volume_rejects_bad_arrays(tmp_path, bad, message):
    patient = make_patient("pt_1", shape=(4, 6, 6))
    arr = np.ones(patient.shape, dtype=np.float32)
    path = tmp_path / ("pt_1.npz" if bad == "suffix" else "pt_1.npy")
    if bad == "shape":
        arr = arr[:-1]
    elif bad == "negative":
        arr[0, 0, 0] = -1
    elif bad == "nan":
        arr[0, 0, 0] = np.nan
    elif bad == "object":
        arr = np.array(["a", "b"])
    np.save(path, arr) if bad != "suffix" else path.write_bytes(b"")
    with pytest.raises(MddoseError, match=message) as err:
        P.read_volume(path, patient)
    assert str(path) in str(err.value)
