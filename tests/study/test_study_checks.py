"""A study checks everything before it trains or writes anything, and says what it could not score
(issue 20, items 2 and 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mddose.cli.main import main
from mddose.data.io import save_patient
from mddose.data.phantom import PHANTOM_OARS, make_phantom
from mddose.study.config import load_study_config, study_from_dict
from mddose.study.runner import check_out_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def _phantom(pid: str, seed: int, *, dose: bool = True, ptv: bool = True):
    p = make_phantom(seed, 32)
    p.id = pid
    if not ptv:
        del p.masks["PTV"]
    return p if dose else p.with_dose(None)


def _folder_study(train: Path, test: Path, **over) -> dict:
    """One tiny C3D on patient folders (the phantoms' ROI channels), one training step."""
    d = {"name": "folders", "data": {"train": str(train), "test": str(test)}, "budget": {"steps": 1},
         "reference": "C3D",
         "methods": [{"name": "C3D", "model": "c3d", "preset": "tiny",
                      "train": {"recipe": "c3d", "val_every": 0, "batch_size": 1,
                                "volume": {"size": 32, "targets": ["PTV"], "oars": list(PHANTOM_OARS)}}}]}
    d.update(over)
    return d


def _write(path: Path, d: dict) -> Path:
    path.write_text(json.dumps(d))
    return path


@pytest.fixture
def folders(tmp_path) -> Path:
    for i in (1, 2):
        save_patient(_phantom(f"train_{i}", i), tmp_path / "train" / f"train_{i}", "nifti")
    save_patient(_phantom("case_1", 11), tmp_path / "test" / "case_1", "nifti")
    save_patient(_phantom("case_2", 12, ptv=False), tmp_path / "test" / "case_2", "nifti")   # cannot be predicted
    save_patient(_phantom("case_3", 13, dose=False), tmp_path / "nodose" / "case_3", "nifti")
    return tmp_path


def test_refused_data_writes_nothing_and_the_corrected_config_is_then_accepted(folders, capsys):
    out = folders / "out"
    bad = _write(folders / "bad.json", _folder_study(folders / "train", folders / "nodose"))
    assert main(["study", "--config", str(bad), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "without dose" in err and "case_3" in err and err.count("\n") == 1
    assert not out.exists()                       # no study_config.json: the corrected config is not "another"
    fixed = load_study_config(_write(folders / "fixed.json", _folder_study(folders / "train", folders / "test")))
    check_out_dir(fixed, out, resume=False)


def test_data_paths_are_saved_absolute(folders, monkeypatch):
    (folders / "cfg").mkdir()
    monkeypatch.chdir(folders)
    cfg = load_study_config(_write(folders / "cfg" / "s.json", _folder_study(Path("train"), Path("test"))))
    assert cfg.data.train == str(folders / "train") and cfg.data.test == str(folders / "test")
    monkeypatch.chdir(folders / "cfg")            # relative to the config file's folder: the same, absolute
    rel = _folder_study(Path("../train"), Path("../test"))
    cfg2 = load_study_config(_write(folders / "cfg" / "s2.json", rel))
    assert Path(cfg2.data.train).resolve() == folders / "train" and Path(cfg2.data.train).is_absolute()


def test_a_test_patient_no_method_could_predict_is_in_n_the_report_and_exit_2(folders, capsys):
    out = folders / "out"
    cfg = _write(folders / "s.json", _folder_study(folders / "train", folders / "test"))
    rc = main(["study", "--config", str(cfg), "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 2 and "incomplete C3D: 1 test patient(s) not scored" in printed and "case_2" in printed
    study = json.loads((out / "study.json").read_text())
    rec = study["methods"]["C3D"]
    assert rec["status"] == "done" and list(rec["not_scored"]) == ["case_2"]
    assert "no target ROI" in rec["not_scored"]["case_2"]
    t1 = (out / "table1.md").read_text()
    row = next(ln for ln in t1.splitlines() if ln.startswith("| C3D"))
    assert row.rstrip(" |").endswith("1 of 2") and "case_2" in t1
    html = (out / "report.html").read_text()
    assert "1 test patient(s) not scored" in html and "case_2" in html


def test_resume_with_another_budget_records_the_budget_each_method_used(tmp_path, capsys):
    """A finished study continued with --budget-minutes 5 retrains nothing: study.json and the report keep
    the budget the methods were trained with."""
    d = {"name": "budget", "data": {"phantoms": {"train": 1, "val": 0, "test": 1, "size": 32, "seed": 3}},
         "budget": {"steps": 1}, "reference": "C3D",
         "methods": [{"name": "C3D", "model": "c3d", "preset": "tiny", "train": {"recipe": "c3d", "val_every": 0}}]}
    cfg = _write(tmp_path / "s.json", d)
    out = tmp_path / "out"
    assert main(["study", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    status = (out / "methods" / "C3D" / "status.json").read_text()
    assert main(["study", "--config", str(cfg), "--out", str(out), "--no-progress", "--resume",
                 "--budget-minutes", "5"]) == 0
    assert (out / "methods" / "C3D" / "status.json").read_text() == status          # nothing retrained
    study = json.loads((out / "study.json").read_text())
    assert study["budget"] == {"steps": 1} and study["config"]["budget"] == {"steps": 1}
    assert study["methods"]["C3D"]["budget"] == {"steps": 1}
    html = (out / "report.html").read_text()
    assert "as trained): steps 1;" in html and "minutes" not in html


def test_prediction_options_are_checked_before_anything_trains(folders, capsys):
    """A prediction option the method's kind refuses is said before the method trains (it used to fail only in
    the predict stage, after training)."""
    d = _folder_study(folders / "train", folders / "test", predict={"tta": "yes"})
    rc = main(["study", "--config", str(_write(folders / "s.json", d)), "--out", str(folders / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "predict.tta" in err and err.count("\n") == 1
    assert not (folders / "out").exists()


@pytest.mark.parametrize("name", ["A|B", "A\nB", "<i>A</i>", " A", "A\\B"])
def test_method_names_that_would_break_a_table_are_refused(name):
    d = _folder_study(Path("/x"), Path("/y"))
    d["methods"][0]["name"] = name
    d["reference"] = name
    with pytest.raises(Exception, match=r"methods\[0\]\.name") as info:
        study_from_dict(d)
    assert "\n" not in str(info.value)


def test_saved_relative_paths_of_older_studies_still_match(folders, monkeypatch):
    """A study directory saved with relative data paths (before they were made absolute) is this study when re-run
    from the same directory."""
    monkeypatch.chdir(folders)
    cfg = load_study_config(_write(folders / "s.json", _folder_study(Path("train"), Path("test"))))
    out = folders / "old"
    out.mkdir()
    old = {**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "train": "train", "test": "test"}}
    (out / "study_config.json").write_text(json.dumps(old))
    check_out_dir(cfg, out, resume=False)
