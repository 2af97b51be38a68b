"""``mddose evaluate`` / ``mddose compare``: outputs, and bad inputs reported as clear one-line errors."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from mddose.cli.main import main

PATIENTS = ("pt_201", "pt_202", "pt_203")


@pytest.fixture(scope="module")
def reference(openkbp_dir, tmp_path_factory):
    """A reference dir with three validation patients (symlinked)."""
    d = tmp_path_factory.mktemp("ref")
    for pid in PATIENTS:
        (d / pid).symlink_to(openkbp_dir / "validation-pats" / pid, target_is_directory=True)
    return d


@pytest.fixture
def pred(openkbp_reference_dir, tmp_path):
    d = tmp_path / "pred"
    shutil.copytree(openkbp_reference_dir / "predictions-noisy", d)
    return d


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _set_line(path, lineno, text):
    lines = path.read_text().splitlines()
    lines[lineno] = text
    path.write_text("\n".join(lines) + "\n")


def test_evaluate_writes_outputs(capsys, reference, pred, openkbp_reference_dir):
    rc, out, _ = _run(capsys, "evaluate", "--reference", str(reference), "--prediction", str(pred))
    assert rc == 0
    assert "Dose score" in out
    summary = json.loads((pred / "evaluation" / "summary.json").read_text())
    expected = json.loads((openkbp_reference_dir / "expected_scores.json").read_text())["noisy"]
    assert summary["patients"] == list(PATIENTS) and summary["missing"] == []
    assert summary["dose_score"] == pytest.approx(expected["dose_score"], rel=1e-9)
    assert summary["dvh_score"] == pytest.approx(expected["dvh_score"], rel=1e-9)
    assert set(summary["hi_definitions"]) == {"HI_ICRU83", "HI_std_mean", "HI_maxmin", "HI_MDDose_error"}
    for key in ("HI_ICRU83", "HI_std_mean", "HI_maxmin", "HI_MDDose_error", "pred:V95|PTV70", "pred:CI_Paddick|PTV70", "pred:Dmean|PTV70"):
        assert key in summary["means"]
    with open(pred / "evaluation" / "per_patient.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["patient"] for r in rows] == list(PATIENTS)
    assert float(rows[0]["dose_error"]) == pytest.approx(expected["dose_error_per_patient"]["pt_201"])


def test_explicit_outputs_and_gamma(capsys, reference, pred, tmp_path):
    js, pp = tmp_path / "o" / "s.json", tmp_path / "o" / "p.csv"
    (pred / "pt_202.csv").unlink()
    (pred / "pt_203.csv").unlink()
    rc, out, _ = _run(capsys, "evaluate", "--reference", str(reference), "--prediction", str(pred),
                      "--json", str(js), "--csv", str(pp), "--gamma")
    assert rc == 0 and js.is_file() and pp.is_file()
    summary = json.loads(js.read_text())
    assert summary["missing"] == ["pt_202", "pt_203"] and summary["patients"] == ["pt_201"]
    assert 0.5 < summary["means"]["gamma_pass_rate"] <= 1.0
    assert "missing predictions (2)" in out


@pytest.mark.parametrize("content, message", [
    ("nan", "NaN"), ("-3.5", "negative"), ("abc", "not a number"),
])
def test_bad_values_skip_that_patient(capsys, reference, pred, content, message):
    path = pred / "pt_202.csv"
    idx = path.read_text().splitlines()[5].split(",")[0]
    _set_line(path, 5, f"{idx},{content}")
    rc, out, err = _run(capsys, "evaluate", "--reference", str(reference), "--prediction", str(pred))
    assert rc == 2 and "1 item(s) failed" in err  # the good patients' results are still written
    summary = json.loads((pred / "evaluation" / "summary.json").read_text())
    assert summary["patients"] == ["pt_201", "pt_203"]
    (err,) = summary["errors"]
    assert err["item"] == "pt_202" and message in err["message"] and "\n" not in err["message"]
    assert any(line.startswith("skipped pt_202:") and message in line for line in out.splitlines())


def test_wrong_grid_is_reported(capsys, reference, pred):
    _set_line(pred / "pt_201.csv", 3, f"{128 ** 3 + 7},1.0")
    rc, out, _ = _run(capsys, "evaluate", "--reference", str(reference), "--prediction", str(pred))
    assert rc == 2 and "outside the grid" in out


def test_wrong_shape_in_memory(openkbp_dir):
    from mddose.data.io import load_patient
    from mddose.evaluate.records import evaluate_arrays

    p = load_patient(openkbp_dir / "validation-pats" / "pt_201")
    res = evaluate_arrays([p], {"pt_201": np.zeros((64, 64, 64), np.float32)})
    assert res.records == [] and "differs from the reference grid" in res.errors[0][1]


def test_not_csv_and_unsupported_files(capsys, reference, pred):
    (pred / "pt_201.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (pred / "pt_202.csv").rename(pred / "pt_202.txt")
    rc, out, _ = _run(capsys, "evaluate", "--reference", str(reference), "--prediction", str(pred))
    assert rc == 2
    summary = json.loads((pred / "evaluation" / "summary.json").read_text())
    errors = dict((e["item"], e["message"]) for e in summary["errors"])
    assert "not a CSV text file" in errors["pt_201"]
    assert "unsupported prediction file" in errors["pt_202"]
    assert summary["patients"] == ["pt_203"]


def test_empty_prediction_dir_exits_2(capsys, reference, tmp_path):
    (tmp_path / "empty").mkdir()
    rc, _, err = _run(capsys, "evaluate", "--reference", str(reference), "--prediction", str(tmp_path / "empty"))
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "no predictions found" in err


def test_nothing_evaluable_exits_2(capsys, reference, pred):
    for pid in PATIENTS:
        (pred / f"{pid}.csv").write_text(",data\n0,nan\n")
    rc, out, err = _run(capsys, "evaluate", "--reference", str(reference), "--prediction", str(pred))
    assert rc == 2 and "no prediction could be evaluated" in err
    assert not (pred / "evaluation").exists()


def test_no_matching_prediction_exits_2(capsys, reference, pred):
    for pid in PATIENTS:
        (pred / f"{pid}.csv").rename(pred / f"x{pid}.csv")
    rc, _, err = _run(capsys, "evaluate", "--reference", str(reference), "--prediction", str(pred))
    assert rc == 2 and "no prediction matches" in err


def test_compare_writes_tables(capsys, caplog, reference, pred, openkbp_reference_dir, tmp_path):
    caplog.set_level("INFO", logger="mddose")
    other = tmp_path / "smoothed"
    shutil.copytree(openkbp_reference_dir / "predictions-smoothed", other)
    assert main(["evaluate", "--reference", str(reference), "--prediction", str(pred)]) == 0  # reused below
    capsys.readouterr()
    out_dir = tmp_path / "cmp"
    rc, out, _ = _run(capsys, "compare", str(pred), str(other), "--names", "noisy", "smooth",
                      "--reference", str(reference), "--out", str(out_dir))
    assert rc == 0
    md = (out_dir / "comparison.md").read_text()
    assert "| noisy (reference) |" in md and "| smooth |" in md and "Dose Score" in md
    rows = list(csv.DictReader(open(out_dir / "comparison.csv", newline="")))
    noisy = next(r for r in rows if r["method"] == "noisy" and r["metric"] == "dose_error")
    smooth = next(r for r in rows if r["method"] == "smooth" and r["metric"] == "dose_error")
    assert float(noisy["mean"]) < float(smooth["mean"]) and smooth["t_pvalue"] != ""
    assert "noisy: reusing" in caplog.text and "smooth: reusing" not in caplog.text


def test_compare_does_not_reuse_stale_evaluation(caplog, reference, pred):
    import os
    import time

    from mddose.evaluate.run import compare_runs

    caplog.set_level("INFO", logger="mddose")
    assert main(["evaluate", "--reference", str(reference), "--prediction", str(pred)]) == 0
    caplog.clear()
    assert compare_runs([pred], reference, names=["a"]) and "a: reusing" in caplog.text  # fresh: reused
    later = time.time() + 10
    os.utime(pred / "pt_201.csv", (later, later))  # a prediction changed after the evaluation
    caplog.clear()
    comp, errors = compare_runs([pred], reference, names=["a"])
    assert errors == []
    assert "reusing" not in caplog.text and comp.summary("a", "dose_error")[2] == 3


def test_compare_names_mismatch_exits_2(capsys, reference, pred):
    rc, _, err = _run(capsys, "compare", str(pred), "--names", "a", "b", "--reference", str(reference))
    assert rc == 2 and "--names" in err


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_nifti_predictions(capsys, reference, openkbp_reference_dir, openkbp_dir, tmp_path, layout):
    from mddose.data.io import load_patient
    from mddose.data.formats.nifti import write_nifti_array
    from mddose.data.formats.openkbp import read_dose_csv
    from mddose.data.patient import Patient

    d = tmp_path / "nii"
    for pid in PATIENTS:
        p = load_patient(openkbp_dir / "validation-pats" / pid)
        dose = read_dose_csv(openkbp_reference_dir / "predictions-noisy" / f"{pid}.csv", p.shape)
        if pid == "pt_203":  # wrong grid
            small = Patient(id=pid, ct=np.zeros((64, 64, 64)), spacing=p.spacing)
            write_nifti_array(np.zeros((64, 64, 64), np.float32), d / f"{pid}.nii.gz", small)
            continue
        path = d / f"{pid}.nii.gz" if layout == "flat" else d / pid / "dose.nii.gz"
        write_nifti_array(dose, path, p)
    rc, out, _ = _run(capsys, "evaluate", "--reference", str(reference), "--prediction", str(d))
    assert rc == 2  # pt_203 failed
    summary = json.loads((d / "evaluation" / "summary.json").read_text())
    expected = json.loads((openkbp_reference_dir / "expected_scores.json").read_text())["noisy"]
    assert summary["patients"] == ["pt_201", "pt_202"]
    for pid in ("pt_201", "pt_202"):  # float32 NIfTI: agrees to ~1e-7
        assert summary["dose_error_per_patient"][pid] == pytest.approx(expected["dose_error_per_patient"][pid],
                                                                        rel=1e-6)
    (err,) = summary["errors"]
    assert err["item"] == "pt_203" and "differs from the reference grid" in err["message"]


# ------------------------------------------------------------------------ issue 11
def test_existing_outputs_are_replaced_only_with_force(capsys, reference, pred, tmp_path):
    """Issue 11: evaluate's outputs follow the rule of every output: an existing file needs --force."""
    args = ["evaluate", "--reference", str(reference), "--prediction", str(pred)]
    assert _run(capsys, *args)[0] == 0
    summary = pred / "evaluation" / "summary.json"
    summary.write_text("{}")  # marks the old file
    rc, out, err = _run(capsys, *args)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "already exists" in err and "--force" in err
    assert summary.read_text() == "{}" and "Dose score" not in out  # refused before any work
    assert _run(capsys, *args, "--force")[0] == 0 and json.loads(summary.read_text())["patients"]
    js, pp = tmp_path / "s.json", tmp_path / "p.csv"
    pp.write_text("keep me")
    rc, _, err = _run(capsys, *args, "--json", str(js), "--csv", str(pp))
    assert rc == 2 and str(pp) in err and not js.exists() and pp.read_text() == "keep me"


def test_compare_out_needs_force(capsys, reference, pred, tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "comparison.csv").write_text("old")
    args = ["compare", str(pred), "--reference", str(reference), "--out", str(out)]
    rc, _, err = _run(capsys, *args)
    assert rc == 2 and "already exists" in err and (out / "comparison.csv").read_text() == "old"
    assert _run(capsys, *args, "--force")[0] == 0 and "method" in (out / "comparison.csv").read_text()


@pytest.mark.parametrize("command", ["evaluate", "compare"])
@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), ZeroDivisionError("division by zero"),
                                 MemoryError("out of memory")])
def test_any_failure_of_one_patient_is_reported_and_the_batch_goes_on(capsys, monkeypatch, reference, pred,
                                                                       command, exc):
    """Issue 11: any exception while reading or scoring one patient names the patient and its file, the
    others are scored and written, and the exit status is 2."""
    from mddose.evaluate import run

    real = run.read_volume

    def read_volume(path, patient):
        if patient.id == "pt_202":
            raise exc
        return real(path, patient)

    monkeypatch.setattr(run, "read_volume", read_volume)
    if command == "evaluate":
        rc, out, err = _run(capsys, "evaluate", "--reference", str(reference), "--prediction", str(pred))
        summary = json.loads((pred / "evaluation" / "summary.json").read_text())
        assert summary["patients"] == ["pt_201", "pt_203"]
        (e,) = summary["errors"]
        assert e["item"] == "pt_202" and str(pred / "pt_202.csv") in e["message"]
        assert f"{type(exc).__name__}: {exc}" in e["message"]
    else:
        rc, out, err = _run(capsys, "compare", str(pred), "--names", "a", "--reference", str(reference))
        assert "| a (reference) |" in out
    assert rc == 2 and "Traceback" not in err
    assert any(line.startswith("skipped") and "pt_202" in line and type(exc).__name__ in line
               for line in out.splitlines())


def test_reference_without_possible_dose_mask_is_named(capsys, openkbp_dir, pred, tmp_path):
    ref = tmp_path / "ref"
    (ref / "pt_201").mkdir(parents=True)
    for f in (openkbp_dir / "validation-pats" / "pt_201").iterdir():
        if f.name != "possible_dose_mask.csv":
            (ref / "pt_201" / f.name).symlink_to(f)
    (ref / "pt_202").symlink_to(openkbp_dir / "validation-pats" / "pt_202", target_is_directory=True)
    rc, out, err = _run(capsys, "evaluate", "--reference", str(ref), "--prediction", str(pred))
    assert rc == 2
    line = next(x for x in out.splitlines() if x.startswith("skipped pt_201:"))
    assert "no possible-dose mask" in line
