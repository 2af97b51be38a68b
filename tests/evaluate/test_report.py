"""The HTML report (mddose.evaluate.report, `mddose report`), incl. a headless-Chromium browser test."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mddose.cli.main import main
from mddose.errors import MddoseError
from mddose.evaluate import report as R
from tests.evaluate.test_figures import make_patient, make_prediction


@pytest.fixture(scope="module")
def patients():
    return [make_patient("pt_2", seed=2), make_patient("pt_10", seed=10), make_patient("pt_1", seed=1)]


@pytest.fixture
def fake_io(monkeypatch, patients):
    """Stand-in for mddose.data.io (written by another helper): load_patients returns the synthetic patients."""
    mod = types.ModuleType("mddose.data.io")
    calls = []

    def load_patients(path, format=None, *, cache=True, progress=False):
        calls.append(Path(path))
        return list(patients), [(str(Path(path) / b), "ct.csv missing") for b in mod.bad]

    mod.load_patients = load_patients
    mod.calls = calls
    mod.bad = []  # names of reference patients that "cannot be read"
    monkeypatch.setitem(sys.modules, "mddose.data.io", mod)
    import mddose.data

    monkeypatch.setattr(mddose.data, "io", mod, raising=False)
    return mod


def _run_dir(tmp_path: Path, patients, *, evaluation: bool = False, uncertainty: bool = True) -> Path:
    run = tmp_path / "run"
    (run / "uncertainty").mkdir(parents=True)
    for p in patients:
        np.save(run / f"{p.id}.npy", make_prediction(p))
    pt1 = next(p for p in patients if p.id == "pt_1")
    if uncertainty:
        np.save(run / "uncertainty" / "pt_1.npy", np.abs(make_prediction(pt1) - pt1.dose) / 2)
    (run / "notes.csv").write_text("a,b\n1,2\n")  # a CSV that is not a prediction
    if evaluation:
        ev = run / "evaluation"
        ev.mkdir()
        (ev / "summary.json").write_text(json.dumps({"dose_score": 1.2345, "dvh_score": 2.3456,
                                                      "stats": {"dose_score_std": 0.5}}))
        with open(ev / "per_patient.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, ["patient", "dose_error", "D95|PTV"])
            w.writeheader()
            for i, p in enumerate(patients):
                w.writerow({"patient": p.id, "dose_error": 3.25 + i, "D95|PTV": 50.5})
    return run


def _frames(html: str) -> list[dict]:
    return [json.loads(m) for m in re.findall(r'<script type="application/json" class="frames">(.*?)</script>',
                                              html, flags=re.S)]


# ---------------------------------------------------------------------------------------------- library
def test_build_report_is_self_contained(tmp_path, patients):
    preds = {p.id: make_prediction(p) for p in patients}
    rep = R.build_report(patients, preds, tmp_path / "r.html", figures_dir=tmp_path / "figs")
    out = rep.path
    assert rep.failures == []
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)  # nothing external
    assert "http://" not in text and "https://" not in text and "<link" not in text
    # natural order of patients and one viewer each
    assert [m for m in re.findall(r'data-patient="([^"]+)"', text)] == ["pt_1", "pt_2", "pt_10"]
    frames = _frames(text)
    assert len(frames) == 3
    for p, fr in zip(sorted(patients, key=lambda p: int(p.id[3:])), frames):
        with_dose = int((p.dose > 0.01 * p.dose.max()).reshape(p.shape[0], -1).any(1).sum())
        assert len(fr["src"]) == len(fr["label"]) == with_dose
        assert all(s.startswith("data:image/") for s in fr["src"])
        base64.b64decode(fr["src"][0].split(",", 1)[1], validate=True)
    assert text.count('<img alt="dose figure') == 3 and text.count('<img alt="dvh figure') == 3
    assert sorted(f.name for f in (tmp_path / "figs").iterdir()) == sorted(
        f"{p.id}_{k}.png" for p in patients for k in ("dose", "dvh"))
    assert out.stat().st_size < 3_000_000


def test_build_report_computes_full_scores(tmp_path, patients):
    preds = {p.id: make_prediction(p) for p in patients}
    text = R.build_report(patients, preds, tmp_path / "r.html").path.read_text(encoding="utf-8")
    # OpenKBP dose error: Σ|ref − pred| over the grid ÷ voxels in the possible-dose mask; score = mean
    errors = [float(np.abs(p.dose.astype(np.float64) - preds[p.id]).sum() / p.possible_dose_mask.sum())
              for p in patients]
    assert re.search(r'<div class="card">dose_score<b>' + re.escape(f"{np.mean(errors):.3f}") + "</b>", text)
    assert '<div class="card">dvh_score<b>' in text
    for e in errors:
        assert f"<td>{e:.3f}</td>" in text
    assert "dvh_metrics_prediction" not in text  # per-patient details stay in the per-patient table


def test_build_report_computes_minimal_scores(tmp_path, patients):
    preds = {p.id: make_prediction(p) for p in patients}
    out = R.build_report(patients, preds, tmp_path / "r.html", full_scores=False).path
    text = out.read_text(encoding="utf-8")
    maes = [float(np.abs(preds[p.id] - p.dose)[p.possible_dose_mask].mean()) for p in patients]
    assert f"{np.mean(maes):.3f}" in text  # dose score card = mean MAE in the possible-dose mask
    for m in maes:
        assert f"{m:.3f}" in text
    row = R.basic_metrics(patients[0], preds[patients[0].id])
    assert row["mae_gy"] == pytest.approx(maes[0])
    assert row["D95|PTV ref"] == pytest.approx(np.percentile(patients[0].dose[patients[0].masks["PTV"]], 5))


def test_build_report_refuses_overwrite_and_empty(tmp_path, patients):
    preds = {patients[0].id: make_prediction(patients[0])}
    out = R.build_report(patients, preds, tmp_path / "r.html").path
    with pytest.raises(MddoseError, match="exists"):
        R.build_report(patients, preds, out)
    R.build_report(patients, preds, out, force=True, max_patients=1)
    with pytest.raises(MddoseError, match="no patient"):
        R.build_report(patients, {"pt_99": preds[patients[0].id]}, tmp_path / "r2.html")


def test_report_without_reference_dose(tmp_path):
    p = make_patient("pt_5", with_dose=False)
    pred = make_prediction(make_patient("pt_5"))
    text = R.build_report([p], {"pt_5": pred}, tmp_path / "r.html").path.read_text()
    assert "No reference dose" in text and len(_frames(text)) == 1


# ---------------------------------------------------------------------------------------------- run dirs
def test_report_run_uses_evaluation_and_uncertainty(tmp_path, patients, fake_io):
    run = _run_dir(tmp_path, patients, evaluation=True)
    fake_io.bad = ["pt_bad"]
    rep = R.report_run(run, tmp_path / "data")
    assert rep.path == run / "report.html" and fake_io.calls == [tmp_path / "data"]
    assert rep.failures == [(str(tmp_path / "data" / "pt_bad"), "ct.csv missing")]
    text = rep.path.read_text(encoding="utf-8")
    assert "1.234" in text and "2.346" in text and "stats.dose_score_std" in text  # summary.json
    assert "3.250" in text and "5.250" in text  # per_patient.csv rows
    assert "scores computed by the report" not in text
    assert "pt_bad" in text  # the reference loader's error is listed
    assert text.count("<span>Uncertainty (σ)</span>") == 1  # only pt_1 has an uncertainty map


def test_report_run_notes_stale_evaluation_and_bad_uncertainty(tmp_path, patients, fake_io):
    import os

    run = _run_dir(tmp_path, patients, evaluation=True)
    np.save(run / "uncertainty" / "pt_1.npy", np.ones((2, 2, 2), np.float32))  # wrong grid
    for f in (run / "evaluation").iterdir():
        os.utime(f, (1_000_000, 1_000_000))
    rep = R.report_run(run, tmp_path / "data")
    text = rep.path.read_text(encoding="utf-8")
    assert "older than the newest prediction" in text
    assert "uncertainty of pt_1 left out" in text and "<span>Uncertainty (σ)</span>" not in text
    (item, msg), = rep.failures  # a broken uncertainty map is a failed item
    assert item == "pt_1" and "uncertainty" in msg and "differs from the reference grid" in msg
    assert len(_frames(text)) == len(patients)  # the patient itself is still reported


def test_report_run_csv_predictions(tmp_path, patients, fake_io):
    from mddose.data.formats.openkbp import write_dose_csv

    run = tmp_path / "run"
    run.mkdir()
    p = patients[2]
    write_dose_csv(make_prediction(p), run / f"{p.id}.csv")
    out = R.report_run(run, tmp_path / "data", tmp_path / "x.html").path
    assert len(_frames(out.read_text())) == 1


def test_cli_report(tmp_path, patients, fake_io, capsys):
    run = _run_dir(tmp_path, patients[2:])
    out = tmp_path / "rep" / "r.html"
    assert main(["report", str(run), "--reference", str(tmp_path / "data"), "--out", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["report", str(run), "--reference", str(tmp_path / "data"), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["report", str(run), "--reference", "x", "--out", str(out), "--force",
                 "--max-patients", "1"]) == 0


def test_page_css_and_script_are_package_files(tmp_path, patients):
    """The report's HTML skeleton, CSS and JavaScript are package files (not Python strings), inlined."""
    from importlib import resources

    from mddose.evaluate.report import page

    files = resources.files("mddose.evaluate.report")
    for name in ("page.html", "report.css", "viewer.js"):
        assert files.joinpath(name).is_file()
    text = R.build_report(patients[:1], {patients[0].id: make_prediction(patients[0])},
                          tmp_path / "r.html").path.read_text(encoding="utf-8")
    assert page.asset("report.css").strip() in text and page.asset("viewer.js").strip() in text
    assert "${" not in text  # every placeholder of page.html filled


@pytest.mark.parametrize("where", ["prediction", "section", "reference"])
def test_report_goes_on_after_any_failure(tmp_path, patients, fake_io, monkeypatch, capsys, where):
    """Issue 11: whatever fails for one patient (any exception) is named, the others are reported, exit 2."""
    from mddose.evaluate.report import build

    run = _run_dir(tmp_path, patients)
    if where == "prediction":
        real = build.read_volume

        def read_volume(path, patient):
            if patient.id == "pt_2" and path.parent == run:
                raise RuntimeError("disk on fire")
            return real(path, patient)

        monkeypatch.setattr(build, "read_volume", read_volume)
    elif where == "section":
        real = build.patient_html

        def patient_html(i, patient, *args):
            if patient.id == "pt_2":
                raise ZeroDivisionError("division by zero")
            return real(i, patient, *args)

        monkeypatch.setattr(build, "patient_html", patient_html)
    else:
        fake_io.bad = ["pt_bad"]
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--reference", str(tmp_path / "data"), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "item(s) failed" in captured.err.splitlines()[-1]
    text = out.read_text(encoding="utf-8")
    failed = {"prediction": "pt_2", "section": "pt_2", "reference": "pt_bad"}[where]
    expected = {"prediction": "RuntimeError: disk on fire", "section": "ZeroDivisionError: division by zero",
                "reference": "ct.csv missing"}[where]
    assert any(failed in line and expected in line for line in captured.out.splitlines())
    assert expected in text
    shown = {"prediction": 2, "section": 2, "reference": 3}[where]
    assert len(_frames(text)) == shown


@pytest.mark.parametrize("case", ["missing", "empty", "no-reference"])
def test_cli_report_errors(tmp_path, patients, fake_io, capsys, case):
    run = tmp_path / "run"
    if case == "empty":
        run.mkdir()
        (run / "readme.txt").write_text("nothing here")
    elif case == "no-reference":
        run = _run_dir(tmp_path, patients)
    args = ["report", str(run)] + ([] if case == "no-reference" else ["--reference", str(tmp_path)])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mddose: error:") and len(err.splitlines()) == 1
    assert {"missing": "no such prediction directory", "empty": "no predictions", "no-reference": "--reference"}[case] in err


def test_report_on_openkbp_reference_scores(tmp_path, openkbp_dir, openkbp_reference_dir):
    """Real data: the report's dose score equals the official OpenKBP evaluator's for one patient."""
    expected = json.loads((openkbp_reference_dir / "expected_scores.json").read_text())["noisy"]
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "pt_201").symlink_to(openkbp_dir / "validation-pats" / "pt_201", target_is_directory=True)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(openkbp_reference_dir / "predictions-noisy" / "pt_201.csv", run / "pt_201.csv")
    assert main(["report", str(run), "--reference", str(ref)]) == 0
    text = (run / "report.html").read_text(encoding="utf-8")
    score = expected["dose_error_per_patient"]["pt_201"]
    assert f'<div class="card">dose_score<b>{score:.3f}</b>' in text
    assert len(_frames(text)) == 1 and text.count('<img alt="dvh figure') == 1


# ---------------------------------------------------------------------------------------------- browser
@pytest.mark.browser
def test_report_in_headless_chromium(tmp_path, patients):
    from tests.browser import chrome

    preds = {p.id: make_prediction(p) for p in patients[1:]}
    unc = {"pt_1": np.abs(preds["pt_1"] - patients[2].dose) / 2}
    out = R.build_report(patients, preds, tmp_path / "report.html", uncertainties=unc).path

    with chrome(tmp_path / "profile") as drv:
        drv.get(out.resolve().as_uri())
        img_src = "return document.querySelector('#viewer-0 img.frame').src"
        before = drv.execute_script(img_src)
        label_before = drv.execute_script("return document.querySelector('#viewer-0 .zlabel').textContent")
        assert before.startswith("data:image/") and label_before.startswith("slice ")
        n = int(drv.execute_script("return document.querySelector('#viewer-0 input.slider').max"))
        drv.execute_script("var s = document.querySelector('#viewer-0 input.slider'); s.value = 0;"
                           "s.dispatchEvent(new Event('input', {bubbles: true}));")
        after = drv.execute_script(img_src)
        assert n > 0 and after != before
        assert drv.execute_script("return document.querySelector('#viewer-0 .zlabel').textContent") != label_before
        # the frame shown is the first pre-rendered one and the browser decoded it
        frames = _frames(out.read_text(encoding="utf-8"))
        assert after == frames[0]["src"][0]
        assert drv.execute_script("var i = document.querySelector('#viewer-0 img.frame');"
                                  "return i.complete && i.naturalWidth;") > 0
        drv.execute_script("document.querySelector('#viewer-0').scrollIntoView()")
        shot = tmp_path / "screenshot.png"
        assert drv.save_screenshot(str(shot))
    from PIL import Image

    assert shot.stat().st_size > 10_000
    arr = np.asarray(Image.open(shot).convert("RGB"))
    assert arr.shape[0] > 500 and arr.shape[1] > 500
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 50  # not a single colour
