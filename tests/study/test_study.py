"""`mddose study`: a whole small study, its outputs, resume after kill -9, failures kept, bad configs refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mddose.cli.main import main
from mddose.errors import MddoseError
from mddose.study.config import builtin_studies, load_study_config, study_from_dict


def _study(**over) -> dict:
    """A study small enough for the test suite: tiny MD-Dose and C3D on 32-voxel phantoms, 2 steps each."""
    d = {"name": "unit", "data": {"phantoms": {"train": 2, "val": 0, "test": 2, "size": 32, "seed": 3}},
         "budget": {"steps": 2}, "reference": "MD-Dose", "predict": {"steps": 2, "tta": True},
         "methods": [
             {"name": "MD-Dose", "model": "md-dose", "preset": "tiny", "tables": ["table1", "table3"],
              "train": {"batch_size": 4, "slices": {"size": 32}, "val_every": 0}},
             {"name": "C3D", "model": "c3d", "preset": "tiny", "train": {"recipe": "c3d", "val_every": 0}},
         ]}
    d.update(over)
    return d


def _write(tmp_path: Path, d: dict, name: str = "study.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished study (shared by the output tests)."""
    root = tmp_path_factory.mktemp("study")
    cfg = _write(root, _study())
    assert main(["study", "--config", str(cfg), "--out", str(root / "out"), "--no-progress"]) == 0
    return root / "out"


def test_outputs_exist_and_hold_per_patient_scores(finished):
    for name in ("table1.md", "table1.csv", "table2.md", "table3.md", "study.json", "report.html"):
        assert (finished / name).is_file(), name
    study = json.loads((finished / "study.json").read_text())
    for method in ("MD-Dose", "C3D"):
        rec = study["methods"][method]
        assert rec["status"] == "done"
        per_patient = rec["stages"]["evaluate"]["values"]["dose_error"]
        assert sorted(per_patient) == ["pt_1", "pt_2"] and all(v >= 0 for v in per_patient.values())
        assert rec["stages"]["train"]["steps"] == 2 and rec["parameters"] > 0
    assert study["config"]["budget"] == {"steps": 2} and study["versions"]["torch"]
    t1 = (finished / "table1.md").read_text()
    assert "MD-Dose (reference)" in t1 and "| C3D |" in t1 and "±" in t1
    assert "MD-Dose" in (finished / "table3.md").read_text()


def test_report_is_offline_and_has_every_part(finished):
    html = (finished / "report.html").read_text()
    assert "http://" not in html and "https://" not in html.replace("https://github.com", "")
    for part in ("Table 1", "Table 2", "Table 3", "Scores by method", "pt_1", "pt_2"):
        assert part in html
    assert html.count("data:image/png;base64,") >= 1 + 2 * 2      # box plots + (maps, DVH) per test patient


def test_rerun_skips_finished_work(finished, capsys):
    before = (finished / "methods" / "MD-Dose" / "status.json").read_text()
    p = _write(finished.parent, _study(), "again.json")
    t = time.monotonic()
    assert main(["study", "--config", str(p), "--out", str(finished), "--no-progress"]) == 0
    assert (finished / "methods" / "MD-Dose" / "status.json").read_text() == before
    assert time.monotonic() - t < 60


def test_failed_method_is_reported_and_the_rest_finish(tmp_path, capsys):
    d = _study()
    d["methods"].append({"name": "Broken", "model": "hd-unet", "preset": "tiny",
                         "train": {"recipe": "c3d", "lr": 1e30, "val_every": 0}})
    d["methods"][1]["train"]["lr"] = 1e-3
    rc = main(["study", "--config", str(_write(tmp_path, d)), "--out", str(tmp_path / "out"), "--no-progress"])
    out = capsys.readouterr().out
    study = json.loads((tmp_path / "out" / "study.json").read_text())
    assert rc == 2 and "failed Broken in train" in out
    assert study["methods"]["Broken"]["status"] == "failed"
    assert study["methods"]["C3D"]["status"] == "done" and study["methods"]["MD-Dose"]["status"] == "done"
    assert "| Broken | failed in train" in (tmp_path / "out" / "table1.md").read_text()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    t = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - t < timeout, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_during_the_second_method_resumes_without_retraining_the_first(tmp_path):
    d = _study(budget={"minutes": 0.15})
    cfg = _write(tmp_path, d)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mddose.cli.main", "study", "--config", str(cfg), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(out / "methods" / "C3D" / "train" / "train_config.json", proc)      # C3D is training now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = json.loads((out / "methods" / "MD-Dose" / "status.json").read_text())
    assert set(first["stages"]) == {"train", "predict", "evaluate"}
    assert not (out / "study.json").exists()
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "methods" / "MD-Dose" / "status.json").read_text()) == first    # not retrained
    study = json.loads((out / "study.json").read_text())
    assert study["methods"]["C3D"]["status"] == "done"


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("change,match", [
    (lambda d: d["methods"][0].update(model="unet9000"), "unknown model 'unet9000'"),
    (lambda d: d["methods"][0].update(preset="huge"), "unknown preset 'huge'"),
    (lambda d: d["methods"][0].update(overrides={"structure_encoder": "lstm"}), "structure_encoder must be one of"),
    (lambda d: d.update(reference="Nobody"), "reference 'Nobody' is not one of the methods"),
    (lambda d: d["methods"][0]["train"].update(max_steps=5), "may not set max_steps"),
    (lambda d: d.update(budget={"minutes": 1, "steps": 3}), "budget must be"),
    (lambda d: d.update(colour="blue"), "unknown key"),
    (lambda d: d["methods"][1].update(name="C3D, small"), "may not contain commas"),
    (lambda d: d["methods"].append(dict(d["methods"][1])), "unique"),
])
def test_bad_study_configs_are_refused_in_one_line(tmp_path, capsys, change, match):
    d = _study()
    change(d)
    rc = main(["study", "--config", str(_write(tmp_path, d)), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_overlapping_train_and_test_patients_are_named(tmp_path):
    from mddose.data.phantom import write_phantoms
    from mddose.study.runner import prepare_data

    write_phantoms(2, tmp_path / "train", seed=0, size=32)
    write_phantoms(1, tmp_path / "test", seed=5, size=32)      # pt_1 in both
    cfg = study_from_dict(_study(data={"train": str(tmp_path / "train"), "test": str(tmp_path / "test")}))
    with pytest.raises(MddoseError, match="overlap the train patients: pt_1"):
        prepare_data(cfg, tmp_path / "out")


def test_test_patients_without_dose_are_refused(tmp_path):
    from mddose.data.io import save_patient
    from mddose.data.phantom import make_phantom
    from mddose.study.runner import prepare_data

    for i, dose in ((1, True), (2, False)):
        p = make_phantom(10 + i, 32)
        p.id = f"case_{i}"
        save_patient(p if dose else p.with_dose(None), tmp_path / "test" / p.id, "nifti")
    make = make_phantom(1, 32)
    make.id = "train_1"
    save_patient(make, tmp_path / "train" / "train_1", "nifti")
    cfg = study_from_dict(_study(data={"train": str(tmp_path / "train"), "test": str(tmp_path / "test")}))
    with pytest.raises(MddoseError, match="without dose.*case_2"):
        prepare_data(cfg, tmp_path / "out")


def test_out_holding_another_study_is_refused(finished, tmp_path, capsys):
    other = _write(tmp_path, _study(name="another"))
    rc = main(["study", "--config", str(other), "--out", str(finished), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds a study of another config (unit)" in err


def _saved(tmp_path: Path, d: dict) -> Path:
    """A study directory whose saved config is ``d`` (nothing run)."""
    from mddose.study.runner import check_out_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "study_config.json").write_text(json.dumps(study_from_dict(d).to_dict()))
    check_out_dir(study_from_dict(d), out, resume=False)     # the same config is always accepted
    return out


def test_resume_may_add_methods_but_not_change_the_saved_ones(tmp_path):
    from mddose.study.runner import check_out_dir

    base = _study()
    out = _saved(tmp_path, {**base, "methods": base["methods"][:1]})
    grown = study_from_dict(base)                                   # MD-Dose unchanged, C3D added
    check_out_dir(grown, out, resume=True)
    with pytest.raises(MddoseError, match="fewer methods; use --resume to add the new ones"):
        check_out_dir(grown, out, resume=False)
    changed = json.loads(json.dumps(base))
    changed["methods"][0]["train"]["batch_size"] = 8                 # a saved method changed: another study
    with pytest.raises(MddoseError, match="holds a study of another config"):
        check_out_dir(study_from_dict(changed), out, resume=True)
    dropped = {**base, "methods": base["methods"][1:]}               # a saved method missing: another study
    dropped["reference"] = "C3D"
    with pytest.raises(MddoseError, match="holds a study of another config"):
        check_out_dir(study_from_dict(dropped), out, resume=True)


def test_unknown_only_method_is_refused(tmp_path, capsys):
    rc = main(["study", "--config", str(_write(tmp_path, _study())), "--out", str(tmp_path / "o"), "--only", "X"])
    assert rc == 2 and "no method named 'X'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(builtin_studies()))
def test_builtin_studies_load(name):
    cfg = load_study_config(name)
    assert name in builtin_studies() and cfg.reference in [m.name for m in cfg.methods]


@pytest.mark.browser
def test_study_report_in_headless_chromium(finished, tmp_path):
    """Every figure of the study report decodes in a real browser and the tables render."""
    from tests.browser import chrome

    with chrome(tmp_path / "profile") as drv:
        drv.get((finished / "report.html").resolve().as_uri())
        n_img, decoded = drv.execute_script(
            "var im = Array.from(document.images); return [im.length, im.filter(i => i.complete && "
            "i.naturalWidth > 100).length];")
        assert n_img >= 5 and decoded == n_img
        rows = drv.execute_script("return document.querySelectorAll('table tr').length")
        assert rows >= 2 + 2 + 2          # header + one row per method, in Tables 1 and 2 (and 3)
        heads = drv.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        assert any(h.startswith("Table 1") for h in heads) and "Test patients" in heads
