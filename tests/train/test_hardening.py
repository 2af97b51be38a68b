"""Training refuses what would silently go wrong, and finishes the rest: bad config values, a resume with another
config, a dataset with broken patients (issue 11, items 2 and 3)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from mddose.cli.main import main
from mddose.errors import MddoseError
from mddose.train.config import RESUME_MAY_CHANGE, load_train_config
from mddose.train.trainer import Trainer
from tests.train.test_trainer import DictDataset, _weights, tiny_config, tiny_model  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {"model": "md-dose", "preset": "tiny", "slices": {"size": 32}, "device": "cpu", "batch_size": 4,
        "data": {"phantoms": {"n": 1, "size": 32, "val": 0}}}


def _write(tmp_path, cfg: dict, name: str = "c.json"):
    p = tmp_path / name
    p.write_text(json.dumps(cfg))
    return p


# ---------------------------------------------------------------------------- config values
BAD_VALUES = [
    ({"grad_clip": -1.0}, r"grad_clip must be >= 0 \(0 turns clipping off\)"),
    ({"max_steps": 0}, "max_steps must be >= 1"),
    ({"max_steps": -5}, "max_steps must be >= 1"),
    ({"checkpoint_every": 0}, "checkpoint_every must be >= 1"),
    ({"lr": "fast"}, "lr must be a number, got 'fast'"),
    ({"lr": float("nan")}, "lr must be a finite number, got nan"),
    ({"epochs": "10"}, "epochs must be an integer, got '10'"),
    ({"epochs": True}, "epochs must be an integer, got True"),
    ({"batch_size": 2.5}, "batch_size must be an integer"),
    ({"ema_decay": "0.9"}, "ema_decay must be a number"),
    ({"weight_decay": False}, "weight_decay must be a number"),
    ({"time_budget_s": "1h"}, "time_budget_s must be a number"),
    ({"amp": 1}, "amp must be true or false"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"val_sampler": "euler"}, "val_sampler must be one of ddpm, ddim, dpmpp2m"),
    ({"model_overrides": []}, "'model_overrides' must be a JSON object"),
    ({"slices": {"sise": 64}}, r"unknown key\(s\) slices\.sise"),
    ({"data": {"phantoms": {"n": "4"}}}, "data.phantoms.n must be an integer"),
    ({"data": {"phantoms": {"m": 4}}}, r"unknown key\(s\) data\.phantoms\.m"),
    ({"data": {"train": 3}}, "data.train must be a path"),
    ({"data": {"phantoms": {"n": 1}, "val_max_slices": 0}}, "data.val_max_slices must be >= 1"),
    ({"diffusion": {"num_timesteps": "1000"}}, "diffusion.num_timesteps must be an integer"),
    ({"diffusion": {"beta_start": "small"}}, "diffusion.beta_start must be a number"),
    ({"diffusion": {"prediction": "x1"}}, "prediction must be one of eps, v, x0"),
    ({"diffusion": []}, "diffusion must be a JSON object"),
]


@pytest.mark.parametrize("bad,match", BAD_VALUES, ids=[json.dumps(b) for b, _ in BAD_VALUES])
def test_bad_config_value_is_one_line_naming_key_and_file(tmp_path, bad, match):
    p = _write(tmp_path, {**BASE, **bad})
    with pytest.raises(MddoseError, match=match) as e:
        load_train_config(p).resolved()
    assert str(e.value).startswith(str(p)) and "\n" not in str(e.value)


@pytest.mark.parametrize("bad,match", BAD_VALUES[:8], ids=[json.dumps(b) for b, _ in BAD_VALUES[:8]])
def test_bad_config_value_via_the_cli_exits_2(tmp_path, capsys, bad, match):
    p = _write(tmp_path, {**BASE, **bad})
    assert main(["train", "--config", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,match", [(["--max-steps", "0"], "--max-steps must be >= 1"),
                                        (["--epochs", "0"], "--epochs must be >= 1"),
                                        (["--max-minutes", "-1"], "--max-minutes must be > 0")])
def test_bad_budget_arguments(tmp_path, capsys, args, match):
    p = _write(tmp_path, BASE)
    assert main(["train", "--config", str(p), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


@pytest.mark.parametrize("value", [-1.0, -0.5])
def test_negative_grad_clip_is_refused_by_the_trainer(tmp_path, value):
    """clip_grad_norm_ with a negative norm multiplies the gradient by a negative factor (gradient ascent)."""
    with pytest.raises(MddoseError, match="grad_clip must be >= 0"):
        Trainer(tiny_config(grad_clip=value), tiny_model(), DictDataset(n=4), tmp_path, progress=False)


def test_grad_clip_zero_means_no_clipping(tmp_path):
    """0 turns clipping off, so that a recipe's clipping can be switched off (null means "the recipe's")."""
    runs = {}
    for clip in (0.0, 1e-4):
        cfg = tiny_config(recipe="paper", grad_clip=clip, ema_decay=0.0, max_steps=2, epochs=1)
        tr = Trainer(cfg, tiny_model(), DictDataset(n=8), tmp_path / str(clip), progress=False)
        tr.fit()
        runs[clip] = _weights(tr)
    none_cfg = tiny_config(recipe="paper", grad_clip=None, ema_decay=0.0, max_steps=2, epochs=1)
    assert none_cfg.resolved().grad_clip is None
    tr = Trainer(none_cfg, tiny_model(), DictDataset(n=8), tmp_path / "none", progress=False)
    tr.fit()
    plain = _weights(tr)
    assert all(torch.equal(plain[k], runs[0.0][k]) for k in plain)
    assert any(not torch.equal(plain[k], runs[1e-4][k]) for k in plain)


# ---------------------------------------------------------------------------- resume with another config
@pytest.mark.parametrize("change,allowed", [
    ({"epochs": 5}, True), ({"max_steps": 3}, True), ({"time_budget_s": 60.0}, True), ({"num_workers": 1}, True),
    ({"checkpoint_every": 1}, True), ({"log_dir": "elsewhere"}, True),
    ({"lr": 2e-3}, False), ({"batch_size": 2}, False), ({"grad_clip": 0.5}, False), ({"seed": 1}, False),
    ({"recipe": "paper", "lr": None, "ema_decay": None, "grad_clip": None, "batch_size": None}, False),
    ({"diffusion": dataclasses.replace(tiny_config().diffusion, prediction="v")}, False),
])
def test_resume_refuses_another_config_but_the_budget(tmp_path, change, allowed):
    cfg = tiny_config(epochs=2, max_steps=2)
    Trainer(cfg, tiny_model(), DictDataset(n=8), tmp_path, progress=False).fit()
    if "log_dir" in change:
        change = {"log_dir": str(tmp_path / change["log_dir"])}
    other = Trainer(dataclasses.replace(cfg, **change), tiny_model(), DictDataset(n=8), tmp_path, progress=False)
    if allowed:
        assert other.resume() and other.step == 2
        return
    with pytest.raises(MddoseError, match="cannot resume: the config differs") as e:
        other.resume()
    key = next(k for k in change if k not in RESUME_MAY_CHANGE)
    assert key in str(e.value) and "only epochs, max_steps" in str(e.value) and "\n" not in str(e.value)


def test_cli_resume_with_another_config_exits_2_before_reading_data(tmp_path, capsys):
    p = _write(tmp_path, {**BASE, "epochs": 3})
    out = tmp_path / "o"
    assert main(["train", "--config", str(p), "--out", str(out), "--max-steps", "1", "--no-progress"]) == 0
    capsys.readouterr()
    before = (out / "last" / "config.json").read_bytes()
    p2 = _write(tmp_path, {**BASE, "epochs": 3, "batch_size": 2, "data": {"train": str(tmp_path / "none")}},
                "c2.json")
    assert main(["train", "--config", str(p2), "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "batch_size (4 → 2)" in err and "data.train" in err and err.count("\n") == 1
    assert (out / "last" / "config.json").read_bytes() == before


# ---------------------------------------------------------------------------- a dataset with broken patients
def _broken_collection(root):
    """Two good phantom patients (NIfTI) and one of each failure kind; returns the bad folders."""
    from mddose.data.io import save_patient
    from mddose.data.phantom import make_phantom

    root.mkdir()
    for i in range(2):
        p = make_phantom(20 + i, 32)
        p.id = f"good_{i}"
        save_patient(p, root / p.id, "nifti")
    bad = {}
    for kind in ("junk_ct", "truncated_dose", "no_dose", "bad_json"):
        p = make_phantom(30, 32)
        p.id = kind
        if kind == "no_dose":
            p = p.with_dose(None)
        save_patient(p, root / kind, "nifti")
        bad[kind] = root / kind
    (root / "junk_ct" / "ct.nii.gz").write_bytes(os.urandom(300))
    dose = root / "truncated_dose" / "dose.nii.gz"
    dose.write_bytes(dose.read_bytes()[:200])
    (root / "empty").mkdir()
    os.symlink(root / "gone", root / "broken_link")
    (root / "bad_json" / "patient.json").write_text("{not json")
    bad.update({k: root / k for k in ("empty", "broken_link")})
    return bad


@pytest.mark.parametrize("model", ["md-dose", "c3d"])
def test_training_skips_broken_patients_names_each_and_exits_2(tmp_path, capsys, model):
    from mddose.data.phantom import PHANTOM_OARS

    bad = _broken_collection(tmp_path / "pats")
    rois = {"targets": ["PTV"], "oars": list(PHANTOM_OARS)}
    section = {"slices": {"size": 32, "reference_dose": 70.0, **rois}} if model == "md-dose" else \
        {"volume": {"size": 16, **rois}}
    cfg = {"model": model, "preset": "tiny", "device": "cpu", "batch_size": 2, "epochs": 1, "val_steps": 1,
           "data": {"train": str(tmp_path / "pats"), "val": str(tmp_path / "pats" / "no_dose"),
                    "val_max_slices": 2}, **section}
    out = tmp_path / "run"
    rc = main(["train", "--config", str(_write(tmp_path, cfg)), "--out", str(out), "--max-steps", "1",
               "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 2 and "Traceback" not in cap.err
    assert "best checkpoint" in cap.out and (out / "last" / "ema.safetensors").is_file()
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("mddose: skipped patient: ")]
    for kind, path in bad.items():     # each bad training patient in one line (no_dose: also as validation)
        assert sum(str(path) in ln for ln in lines) == (2 if kind == "no_dose" else 1), (kind, lines)
    assert len(lines) == len(bad) + 1 and not any("good_" in ln for ln in lines)
    assert cap.err.splitlines()[-1] == f"mddose: error: {len(bad) + 1} patient(s) skipped (listed above); " \
                                       "trained on the others"


def test_all_patients_broken_is_an_error(tmp_path, capsys):
    root = tmp_path / "pats"
    root.mkdir()
    (root / "a").mkdir()
    (root / "b").mkdir()
    cfg = {**BASE, "data": {"train": str(root)}}
    assert main(["train", "--config", str(_write(tmp_path, cfg)), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no usable" in err and "Traceback" not in err and err.strip().splitlines()[-1].startswith("mddose: error")


def test_patient_list_with_a_missing_entry_is_skipped(tmp_path):
    from mddose.data.io import save_patient
    from mddose.data.phantom import make_phantom
    from mddose.data.sources import list_patients

    save_patient(make_phantom(1, 32), tmp_path / "p1", "nifti")
    lst = tmp_path / "list.txt"
    lst.write_text("# training patients\np1\nmissing\n")
    good, skipped = list_patients(str(lst))
    assert good == [tmp_path / "p1"]
    assert skipped == [(str(tmp_path / "missing"), f"{tmp_path / 'missing'}: listed in {lst} but not found")]


def test_resume_compares_data_folders_not_their_spelling(tmp_path, monkeypatch):
    from mddose.train.config import DataConfig, resume_differences

    (tmp_path / "pats").mkdir()
    monkeypatch.chdir(tmp_path)
    saved = tiny_config(data=DataConfig(train="pats")).resolved().to_dict()
    assert resume_differences(saved, tiny_config(data=DataConfig(train=str(tmp_path / "pats"))).resolved()) == []
    assert resume_differences(saved, tiny_config(data=DataConfig(train="./pats/")).resolved()) == []
    diff = resume_differences(saved, tiny_config(data=DataConfig(train=str(tmp_path))).resolved())
    assert len(diff) == 1 and diff[0].startswith("data.train")


def test_relative_data_paths_become_absolute(tmp_path, monkeypatch):
    (tmp_path / "cfg" / "pats").mkdir(parents=True)
    p = _write(tmp_path / "cfg", {**BASE, "data": {"train": "pats"}})
    monkeypatch.chdir(tmp_path)
    assert load_train_config(p).data.train == str(tmp_path / "cfg" / "pats")
