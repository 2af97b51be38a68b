"""``--force`` replaces an output only once the new result is complete: a run that fails midway (a bad patient, an
interruption) never leaves less than there was — before/after snapshots of ``predict`` and ``data convert``; and
``compare --out`` / ``report --figures-dir`` are held by one writer."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from mddose.cli.main import main
from mddose.utils.lock import output_lock

pytestmark = pytest.mark.usefixtures("one_thread")


def _snapshot(root: Path) -> dict:
    """Every file (SHA-256) and folder (None) under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def _siblings(root: Path) -> list[str]:
    return sorted(p.name for p in root.parent.iterdir() if p.name.startswith(".mddose-tmp."))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Two phantoms, a copy whose second patient is broken, and a 1-step tiny md-dose checkpoint."""
    tmp = tmp_path_factory.mktemp("force")
    assert main(["data", "phantom", "--n", "2", "--out", str(tmp / "ph"), "--size", "64"]) == 0
    shutil.copytree(tmp / "ph", tmp / "broken")
    (tmp / "broken" / "pt_2" / "ct.csv").write_text("not a ct\n")
    cfg = tmp / "cfg.json"
    cfg.write_text(json.dumps({"model": "md-dose", "preset": "tiny", "slices": {"size": 32},
                               "data": {"phantoms": {"n": 1, "size": 32, "val": 0}}, "batch_size": 4,
                               "epochs": 1, "device": "cpu"}))
    assert main(["train", "--config", str(cfg), "--out", str(tmp / "run"), "--max-steps", "1", "--no-progress"]) == 0
    return {"ph": tmp / "ph", "broken": tmp / "broken", "ckpt": tmp / "run" / "last"}


def _predict(data, inp: Path, out: Path, *extra: str) -> int:
    return main(["predict", "--checkpoint", str(data["ckpt"]), "--input", str(inp), "--out", str(out),
                 "--steps", "2", "--batch", "64", *extra])


@pytest.fixture
def predicted(tmp_path, data) -> Path:
    out = tmp_path / "pred"
    assert _predict(data, data["ph"], out) == 0
    (out / "notes.txt").write_text("the user's own notes\n")
    return out


def test_predict_force_interrupted_midway_leaves_the_output_as_it_was(tmp_path, data, predicted, monkeypatch):
    import mddose.predict.batch as batch

    before = _snapshot(predicted)
    calls = []
    real = batch.write_prediction

    def interrupted(*a, **k):                            # the first patient written, then the run is stopped
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(batch, "write_prediction", interrupted)
    assert _predict(data, data["ph"], predicted, "--force", "--seed", "1") == 130
    assert len(calls) == 2
    assert _snapshot(predicted) == before and _siblings(predicted) == []


def test_predict_force_with_a_failing_patient_keeps_its_previous_prediction(tmp_path, data, predicted):
    before = _snapshot(predicted)
    assert _predict(data, data["broken"], predicted, "--force", "--seed", "1") == 2
    after = _snapshot(predicted)
    assert after["pt_1.csv"] != before["pt_1.csv"]              # predicted again (another seed)
    assert {k: after[k] for k in ("pt_2.csv", "notes.txt")} == {k: before[k] for k in ("pt_2.csv", "notes.txt")}
    assert set(after) == set(before)                            # nothing lost
    info = json.loads((predicted / "predict.json").read_text())
    assert info["patients"] == ["pt_1"] and info["kept"] == ["notes.txt", "pt_2.csv"]
    assert [Path(e[0]).name for e in info["errors"]] == ["pt_2"] and _siblings(predicted) == []


def test_predict_force_that_predicts_nothing_changes_nothing(tmp_path, data, predicted, capsys):
    before = _snapshot(predicted)
    shutil.copytree(data["broken"] / "pt_2", tmp_path / "only_bad" / "pt_2")
    assert _predict(data, tmp_path / "only_bad", predicted, "--force") == 2
    assert "nothing was predicted" in capsys.readouterr().err
    assert _snapshot(predicted) == before


@pytest.fixture
def converted(tmp_path, data) -> Path:
    dst = tmp_path / "nii"
    assert main(["data", "convert", str(data["ph"]), str(dst), "--to", "nifti"]) == 0
    return dst


def test_convert_force_with_a_failing_patient_keeps_its_previous_conversion(tmp_path, data, converted):
    before = _snapshot(converted)
    assert main(["data", "convert", str(data["broken"]), str(converted), "--to", "nifti", "--force"]) == 2
    after = _snapshot(converted)
    assert set(after) == set(before)                            # pt_2 is still there
    assert {k: v for k, v in after.items() if k.startswith("pt_2")} == \
        {k: v for k, v in before.items() if k.startswith("pt_2")}
    assert _siblings(converted) == []


def test_convert_force_interrupted_midway_leaves_the_output_as_it_was(tmp_path, data, converted, monkeypatch):
    import mddose.data.io as io

    before = _snapshot(converted)
    real, calls = io.save_patient, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(io, "save_patient", interrupted)
    assert main(["data", "convert", str(data["ph"]), str(converted), "--to", "nifti", "--force"]) == 130
    assert _snapshot(converted) == before and _siblings(converted) == []


@pytest.mark.parametrize("command", ["compare", "report"])
def test_compare_out_and_report_figures_dir_have_one_writer(tmp_path, data, predicted, capsys, command):
    target = tmp_path / "held"
    argv = {"compare": ["compare", str(predicted), str(predicted), "--names", "a", "b", "--reference",
                        str(data["ph"]), "--out", str(target)],
            "report": ["report", str(predicted), "--reference", str(data["ph"]), "--out",
                       str(tmp_path / "r.html"), "--figures-dir", str(target)]}[command]
    with output_lock(target, command="mddose other"):
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another mddose run holds it" in err[0] and str(target) in err[0], err
    assert not target.exists() and not (tmp_path / "r.html").exists()
    assert main(argv) in (0, 2) and target.is_dir()             # free again: written (0, or 2 for a skipped item)
