"""Targets with no voxel (issue 20, item 3): training refuses a patient without a non-empty target by name, as
prediction does; an empty ROI file is treated as absent, and said (log and predict.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from mddose.cli.main import main
from mddose.data.io import load_patient, save_patient
from mddose.data.phantom import PHANTOM_OARS, make_phantom

pytestmark = pytest.mark.usefixtures("one_thread")


def _phantom(pid: str, seed: int, ptv: str = "kept", extra_target: bool = False):
    """A 32-voxel phantom whose PTV is ``kept``, ``empty`` (a mask of zeros) or ``gone``; ``extra_target``: also an
    empty target ``PTV2`` (with its prescription)."""
    p = make_phantom(seed, 32)
    p.id = pid
    if ptv == "empty":
        p.masks["PTV"] = np.zeros_like(p.masks["PTV"])
    elif ptv == "gone":
        del p.masks["PTV"]
    if extra_target:
        p.masks["PTV2"] = np.zeros_like(p.masks["Body"])
        p.prescriptions = {**p.prescriptions, "PTV2": 50.0}
    return p


def _config(tmp_path: Path, train: Path, targets=("PTV",)) -> Path:
    cfg = {"model": "c3d", "preset": "tiny", "device": "cpu", "batch_size": 1, "val_every": 0,
           "volume": {"size": 32, "targets": list(targets), "oars": list(PHANTOM_OARS)}, "data": {"train": str(train)}}
    p = tmp_path / "train.json"
    p.write_text(json.dumps(cfg))
    return p


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("targets")
    for pid, seed, ptv in (("pt_ok", 1, "kept"), ("pt_empty", 2, "empty"), ("pt_gone", 3, "gone")):
        save_patient(_phantom(pid, seed, ptv), root / "mixed" / pid, "nifti")
    save_patient(_phantom("pt_two", 4, extra_target=True), root / "two" / "pt_two", "nifti")
    save_patient(_phantom("pt_empty", 2, "empty"), root / "empty" / "pt_empty", "nifti")
    return root


def test_empty_mask_file_reads_as_an_empty_roi(folders):
    assert not load_patient(folders / "mixed" / "pt_empty").masks["PTV"].any()


def test_training_refuses_patients_without_a_nonempty_target_by_name(folders, tmp_path, capsys):
    rc = main(["train", "--config", str(_config(tmp_path, folders / "mixed")), "--out", str(tmp_path / "run"),
               "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    skipped = [ln for ln in err.splitlines() if ln.startswith("mddose: skipped patient")]
    assert len(skipped) == 2
    assert any("pt_empty" in ln and "PTV has no voxel" in ln for ln in skipped)
    assert any("pt_gone" in ln and "no target ROI" in ln for ln in skipped)
    assert (tmp_path / "run" / "last").is_dir()                  # trained on the one usable patient


@pytest.fixture(scope="module")
def two_target_checkpoint(folders, tmp_path_factory) -> Path:
    """A checkpoint whose model takes the targets PTV and PTV2 (trained 1 step on the usable patient)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = _config(tmp, folders / "mixed" / "pt_ok", targets=("PTV", "PTV2"))
    assert main(["train", "--config", str(cfg), "--out", str(tmp / "run"), "--max-steps", "1", "--no-progress"]) == 0
    return tmp / "run" / "last"


def test_prediction_treats_an_empty_target_file_as_absent_and_says_so(folders, two_target_checkpoint, tmp_path,
                                                                     caplog):
    with caplog.at_level(logging.INFO, logger="mddose"):
        rc = main(["predict", "--checkpoint", str(two_target_checkpoint), "--input", str(folders / "two"),
                   "--out", str(tmp_path / "pred"), "--format", "nifti"])
    assert rc == 0
    info = json.loads((tmp_path / "pred" / "predict.json").read_text())
    assert info["patients"] == ["pt_two"] and info["empty_rois"] == {"pt_two": ["PTV2"]}
    assert any("pt_two" in r.getMessage() and "PTV2" in r.getMessage() and "no voxel" in r.getMessage()
               for r in caplog.records)


def test_prediction_refuses_a_patient_whose_only_target_is_empty(folders, two_target_checkpoint, tmp_path, capsys):
    rc = main(["predict", "--checkpoint", str(two_target_checkpoint), "--input", str(folders / "empty"),
               "--out", str(tmp_path / "pred"), "--format", "nifti"])
    err = capsys.readouterr().err
    assert rc == 2 and "pt_empty" in err and "has no target ROI" in err
    assert not (tmp_path / "pred").exists() or not list((tmp_path / "pred").glob("*.nii.gz"))
