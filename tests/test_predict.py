"""Whole-patient prediction: checkpoint → slices → sampler → 3D dose files that read back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mddose.cli.main import main
from mddose.data.io import load_patient, save_patient
from mddose.data.phantom import make_phantom
from mddose.data.inputs.slices import SliceConfig
from mddose.diffusion import GaussianDiffusion
from mddose.errors import MddoseError
from mddose.models import build_model
from mddose.predict import predict_patient, predict_to_dir
from mddose.train.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint

SIZE = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An (untrained) tiny md-dose checkpoint for 32² phantom slices."""
    torch.manual_seed(0)
    cfg = SliceConfig.for_phantoms(size=SIZE)
    model = build_model("md-dose", preset="tiny", in_channels=cfg.channels)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt"
    conf = checkpoint_config(model, data_config={"slice_config": cfg.to_dict()}, train_config={},
                             diffusion=GaussianDiffusion().to_dict(), step=0, epoch=0)
    save_checkpoint(path, model=model, ema=model, config=conf)
    return path


@pytest.fixture(scope="module")
def patients_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("patients")
    for i in range(2):
        p = make_phantom(100 + i, 32)
        p.id = f"pt_{i + 1}"
        save_patient(p, root / p.id, "nifti")
    return root


def test_predict_patient_shape_mask_and_uncertainty(checkpoint):
    bundle = load_checkpoint(checkpoint)
    patient = make_phantom(7, 32)
    pred = predict_patient(bundle, patient, sampler="dpmpp2m", steps=3, samples=2, batch=8)
    assert pred.dose.shape == patient.shape and pred.std.shape == patient.shape
    assert np.isfinite(pred.dose).all() and (pred.dose >= 0).all()
    outside = ~patient.dose_mask()
    assert not pred.dose[outside].any() and not pred.std[outside].any()
    assert pred.std[patient.dose_mask()].max() > 0
    # the reference dose is never used: a patient without dose predicts the same
    again = predict_patient(bundle, patient.with_dose(None), sampler="dpmpp2m", steps=3, samples=2, batch=8)
    np.testing.assert_array_equal(pred.dose, again.dose)


def test_missing_oar_is_an_empty_channel_as_in_training(checkpoint):
    """OpenKBP's absent OAR = not contoured: predicted with an empty channel (as training does), named."""
    from mddose.data.inputs.slices import patient_to_slices

    bundle = load_checkpoint(checkpoint)
    patient = make_phantom(3, 32)
    del patient.masks["Heart"]
    pred = predict_patient(bundle, patient, steps=2)
    assert pred.dose.shape == patient.shape and pred.missing_rois == ["Heart"]
    heart = 2 + list(bundle.slice_config.oars).index("Heart")
    assert not patient_to_slices(patient, bundle.slice_config, for_prediction=True).cond[:, heart].any()
    full = predict_patient(bundle, make_phantom(3, 32), steps=2)
    assert full.missing_rois == [] and not np.array_equal(full.dose, pred.dose)


@pytest.mark.parametrize("drop,match", [("targets", "has no target ROI"), ("oars", "has none of the model's OARs")])
def test_patient_without_any_target_or_any_oar_is_refused_by_name(checkpoint, drop, match):
    bundle = load_checkpoint(checkpoint)
    patient = make_phantom(3, 32)
    for name in getattr(bundle.slice_config, drop):
        patient.masks.pop(name, None)
    with pytest.raises(MddoseError, match=f"patient {patient.id}: {match}"):
        predict_patient(bundle, patient, steps=2)


def test_predict_json_names_the_missing_oars(checkpoint, tmp_path):
    root = tmp_path / "in"
    p = make_phantom(5, 32)
    p.id = "pt_9"
    del p.masks["Heart"]
    save_patient(p, root / p.id, "nifti")
    done, errors = predict_to_dir(checkpoint, root, tmp_path / "out", steps=2, progress=False)
    info = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert done == ["pt_9"] and errors == [] and info["missing_rois"] == {"pt_9": ["Heart"]}


@pytest.mark.parametrize("value,match", [(float("nan"), "not finite"), (5.0, "out of range")])
def test_broken_checkpoint_prediction_is_refused_not_written(checkpoint_3d, patients_dir, tmp_path, value, match):
    """A checkpoint whose weights give NaN or an implausible dose (here: C3D's output bias) writes nothing."""
    from mddose.train.checkpoint import save_checkpoint as save

    bundle = load_checkpoint(checkpoint_3d)
    with torch.no_grad():
        bundle.model.head_b.bias.fill_(value)       # dose / 70 = 5 → 350 Gy
    conf = dict(bundle.meta)
    conf.pop("files", None)
    broken = tmp_path / "broken"
    save(broken, model=bundle.model, ema=bundle.model, config=conf)
    if value != value:   # NaN weights are refused when the checkpoint is loaded already
        with pytest.raises(MddoseError, match="NaN|not finite|non-finite"):
            load_checkpoint(broken)
        return
    with pytest.raises(MddoseError, match="nothing was predicted.*" + match):
        predict_to_dir(broken, patients_dir, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("*.csv"))


@pytest.mark.parametrize("fmt, suffix", [("nifti", ".nii.gz"), ("openkbp", ".csv")])
def test_predict_to_dir_reads_back(checkpoint, patients_dir, tmp_path, fmt, suffix):
    out = tmp_path / "pred"
    done, errors = predict_to_dir(checkpoint, patients_dir, out, fmt=fmt, sampler="ddim", steps=2,
                                  samples=2, progress=False)
    assert sorted(done) == ["pt_1", "pt_2"] and errors == []
    info = json.loads((out / "predict.json").read_text())
    assert info["patients"] == done and info["sampler"] == "ddim"
    for pid in done:
        assert (out / f"{pid}{suffix}").is_file() and (out / "uncertainty" / f"{pid}{suffix}").is_file()
    ref = load_patient(patients_dir / "pt_1", cache=False)
    if fmt == "nifti":
        from mddose.data.formats.nifti import read_nifti_array

        dose = read_nifti_array(out / "pt_1.nii.gz")[0]
    else:
        from mddose.data.formats.openkbp import read_dose_csv

        dose = read_dose_csv(out / "pt_1.csv", shape=ref.shape)
    direct = predict_patient(load_checkpoint(checkpoint), ref, sampler="ddim", steps=2, samples=2, batch=16)
    np.testing.assert_allclose(dose, direct.dose, rtol=1e-6, atol=1e-6)


def test_predict_refuses_nonempty_output(checkpoint, patients_dir, tmp_path):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(MddoseError, match="not empty"):
        predict_to_dir(checkpoint, patients_dir, out, progress=False)
    assert (out / "mine.txt").read_text() == "user data"


def test_cli_predict_and_bad_checkpoint(checkpoint, patients_dir, tmp_path, capsys):
    out = tmp_path / "pred"
    rc = main(["predict", "--checkpoint", str(checkpoint), "--input", str(patients_dir / "pt_1"),
               "--out", str(out), "--format", "nifti", "--steps", "2"])
    assert rc == 0 and (out / "pt_1.nii.gz").is_file()
    capsys.readouterr()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    rc = main(["predict", "--checkpoint", str(bad), "--input", str(patients_dir), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------------------- 3D regression models
@pytest.fixture(scope="module")
def checkpoint_3d(tmp_path_factory):
    """An (untrained) tiny C3D checkpoint on a 16³ grid for phantoms."""
    from mddose.data.inputs.volume import VolumeConfig

    torch.manual_seed(0)
    vcfg = VolumeConfig.for_phantoms(size=16)
    model = build_model("c3d", preset="tiny", in_channels=vcfg.channels, grid_size=16)
    with torch.no_grad():                       # a positive output everywhere, so the dose is not all clipped
        model.head_b.bias.fill_(0.5)
    path = tmp_path_factory.mktemp("ckpt3d") / "ckpt"
    conf = checkpoint_config(model, kind="regression", data_config={"volume_config": vcfg.to_dict()},
                             train_config={}, diffusion=None, step=0, epoch=0)
    save_checkpoint(path, model=model, ema=model, config=conf)
    return path


def test_predict_3d_whole_volume_with_and_without_tta(checkpoint_3d):
    bundle = load_checkpoint(checkpoint_3d)
    assert bundle.kind == "regression" and bundle.volume_config.size == 16
    patient = make_phantom(7, 32)
    with_tta = predict_patient(bundle, patient)
    without = predict_patient(bundle, patient, tta=False)
    for pred in (with_tta, without):
        assert pred.dose.shape == patient.shape and pred.std is None
        assert np.isfinite(pred.dose).all() and (pred.dose >= 0).all() and pred.dose.any()
        assert not pred.dose[~patient.dose_mask()].any()
    assert not np.array_equal(with_tta.dose, without.dose)      # TTA really averages other passes


@pytest.mark.parametrize("option", [{"sampler": "ddpm"}, {"steps": 5}, {"samples": 2}, {"eta": 0.5}])
def test_diffusion_options_refused_for_3d_models(checkpoint_3d, option):
    with pytest.raises(MddoseError, match=f"--{next(iter(option))}: only for 2D diffusion models"):
        predict_patient(load_checkpoint(checkpoint_3d), make_phantom(7, 32), **option)


def test_tta_option_refused_for_diffusion_models(checkpoint):
    with pytest.raises(MddoseError, match="--no-tta: only for 3D regression models"):
        predict_patient(load_checkpoint(checkpoint), make_phantom(7, 32), tta=False)


@pytest.mark.parametrize("args", [["--steps", "5"], ["--samples", "2"], ["--sampler", "ddim"]])
def test_cli_predict_3d_bad_options_exit_2(checkpoint_3d, patients_dir, tmp_path, capsys, args):
    rc = main(["predict", "--checkpoint", str(checkpoint_3d), "--input", str(patients_dir), "--out",
               str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "only for 2D diffusion models" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_predict_3d_writes_and_records_kind(checkpoint_3d, patients_dir, tmp_path):
    out = tmp_path / "o"
    assert main(["predict", "--checkpoint", str(checkpoint_3d), "--input", str(patients_dir), "--out", str(out),
                 "--no-tta"]) == 0
    info = json.loads((out / "predict.json").read_text())
    assert info["kind"] == "regression" and info["tta"] is False and "sampler" not in info
    assert sorted(info["patients"]) == ["pt_1", "pt_2"]


# ---------------------------------------------------------------------------- issue 11: outputs, bad items
def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("bad_id", ["../../escaped", "sub/../../escaped", "..", ".", "", "a/b", "x\0y", "ABSOLUTE"])
@pytest.mark.parametrize("fmt", ["openkbp", "nifti", "dicom"])
def test_write_prediction_never_writes_outside_out(tmp_path, bad_id, fmt):
    from mddose.predict import Prediction, write_prediction

    patient = make_phantom(1, 32)
    bad_id = str(tmp_path / "escaped") if bad_id == "ABSOLUTE" else bad_id
    out = tmp_path / "a" / "b" / "out"
    out.mkdir(parents=True)
    pred = Prediction(bad_id, np.zeros(patient.shape, np.float32), np.zeros(patient.shape, np.float32))
    with pytest.raises(MddoseError, match="safe file name|outside the output"):
        write_prediction(pred, patient, out, fmt)
    assert _tree(tmp_path) == ["a", "a/b", "a/b/out"]


def test_write_prediction_refuses_a_symlink_out_of_out(tmp_path):
    from mddose.predict import Prediction, write_prediction

    patient = make_phantom(1, 32)
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    out.mkdir()
    (out / "uncertainty").symlink_to(elsewhere)
    pred = Prediction("pt_1", np.zeros(patient.shape, np.float32), np.zeros(patient.shape, np.float32))
    with pytest.raises(MddoseError, match="outside the output"):
        write_prediction(pred, patient, out, "openkbp")
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == ["uncertainty"]


@pytest.fixture
def patients_with_duplicate(tmp_path, patients_dir):
    """pt_1, pt_2 and ``copy_of_pt_1`` (a second patient whose id is ``PT_1``: same file name on a
    case-insensitive file system)."""
    root = tmp_path / "patients"
    shutil.copytree(patients_dir, root)
    p = make_phantom(200, 32)
    p.id = "PT_1"
    save_patient(p, root / "copy_of_pt_1", "nifti")
    return root


def test_duplicate_ids_are_refused_by_name(checkpoint, patients_with_duplicate, tmp_path, capsys):
    out = tmp_path / "pred"
    rc = main(["predict", "--checkpoint", str(checkpoint), "--input", str(patients_with_duplicate), "--out", str(out),
               "--steps", "1"])
    captured = capsys.readouterr()
    assert rc == 2 and "Traceback" not in captured.err
    assert sorted(p.name for p in out.glob("*.csv")) == ["pt_2.csv"]       # neither pt_1 nor PT_1 overwrote
    info = json.loads((out / "predict.json").read_text())
    refused = {Path(item).name: msg for item, msg in info["errors"]}
    assert set(refused) == {"pt_1", "copy_of_pt_1"}
    assert all("is also the id of" in msg for msg in refused.values())
    assert "copy_of_pt_1" in refused["pt_1"] and "pt_1" in refused["copy_of_pt_1"]


@pytest.mark.parametrize("where", ["load", "predict", "write"])
@pytest.mark.parametrize("exc", [TypeError("unexpected"), KeyError("Heart"), MddoseError("bad"),
                                 PermissionError(13, "Permission denied", "/x/ct.csv")], ids=lambda e: type(e).__name__)
def test_any_failure_of_one_patient_is_reported_and_the_batch_goes_on(checkpoint, patients_dir, tmp_path, capsys,
                                                                      monkeypatch, where, exc):
    import mddose.data.io as data_io
    import mddose.predict.batch as predict_mod

    target = {"load": (data_io, "load_patient"), "predict": (predict_mod, "predict_resolved"),
              "write": (predict_mod, "write_prediction")}[where]
    real = getattr(*target)

    def failing(first, *args, **kwargs):
        ident = Path(first).name if where == "load" else args[0].id     # args[0]: the patient
        if ident == "pt_1":
            raise exc
        return real(first, *args, **kwargs)

    monkeypatch.setattr(*target, failing)
    out = tmp_path / "pred"
    rc = main(["predict", "--checkpoint", str(checkpoint), "--input", str(patients_dir), "--out", str(out),
               "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert (out / "pt_2.csv").is_file() and not (out / "pt_1.csv").exists()   # the good one is still written
    info = json.loads((out / "predict.json").read_text())
    assert info["patients"] == ["pt_2"]
    [(item, msg)] = info["errors"]
    assert Path(item).name == "pt_1" and msg.strip()


def test_stale_temporary_files_of_a_killed_run_are_removed(checkpoint, patients_dir, tmp_path):
    from mddose.utils import fs

    out = tmp_path / "pred"
    (out / "uncertainty").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = [out / f"{fs.TEMP_PREFIX}{fs._host()}.{dead}.pt_1.csv.abcd1234.tmp.csv",
             out / "uncertainty" / f"{fs.TEMP_PREFIX}{fs._host()}.{dead}.pt_1.csv.efgh5678.tmp.csv"]
    for p in stale:
        p.write_text("half-written")
    done, errors = predict_to_dir(checkpoint, patients_dir, out, steps=1, samples=2, progress=False)  # no --force
    assert sorted(done) == ["pt_1", "pt_2"] and errors == []
    assert not any(p.exists() for p in stale)


@pytest.mark.parametrize("kw, match", [({"device": "tpu"}, "--device"), ({"batch": 0}, "--batch"),
                                       ({"fmt": "png"}, "--format")])
def test_bad_options_are_one_line_errors(checkpoint, patients_dir, tmp_path, kw, match):
    with pytest.raises(MddoseError, match=match):
        predict_to_dir(checkpoint, patients_dir, tmp_path / "o", progress=False, **kw)
    assert not (tmp_path / "o").exists()


def test_output_that_is_a_file_is_refused(checkpoint, patients_dir, tmp_path):
    (tmp_path / "o").write_text("user data")
    with pytest.raises(MddoseError, match="not a directory"):
        predict_to_dir(checkpoint, patients_dir, tmp_path / "o", progress=False, force=True)
    assert (tmp_path / "o").read_text() == "user data"
