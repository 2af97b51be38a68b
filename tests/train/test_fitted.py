"""A fitted kind (the tree ensemble) through ``mddose train``: rows → trees → a checkpoint like any other."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from mddose.errors import MddoseError
from mddose.train import train
from mddose.train.config import TrainConfig

pytest.importorskip("sklearn.ensemble")


def _cfg(**kw) -> TrainConfig:
    d = {"model": "gbt", "preset": "tiny", "data": {"phantoms": {"train": 2, "val": 1, "size": 32, "seed": 1}},
         "features": {"voxels_per_patient": 1500}, "model_overrides": {"learning_rate": 0.5}, **kw}
    return TrainConfig.from_dict(d)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gbt") / "run"
    skipped: list = []
    best = train(_cfg(), out, progress=False, skipped=skipped)
    return out, best, skipped


def test_a_fit_is_a_sealed_checkpoint_with_logs(run):
    from mddose.train.checkpoint import load_checkpoint

    out, best, skipped = run
    assert best == out / "best" and not skipped
    bundle = load_checkpoint(best)
    assert bundle.kind == "tree" and bundle.model.config.trees == 10 and bundle.model.config.nodes > 10
    meta = json.loads((best / "config.json").read_text())
    assert meta["step"] == 10 and meta["feature_config"]["voxels_per_patient"] == 1500
    state = json.loads((out / "last" / "train_state.json").read_text())["state"]
    assert state["complete"] is True and state["rows"] == 3000 and state["elapsed"] > 0
    train_log = (out / "logs" / "train.csv").read_text().splitlines()
    assert train_log[0].startswith("step") and train_log[-1].startswith("10,")
    val = (out / "logs" / "val.csv").read_text().splitlines()
    assert len(val) == 2 and float(val[1].split(",")[2]) > 0


def test_the_loaded_fit_predicts_a_dose_on_the_patients_grid(run):
    from mddose.data.phantom import make_phantom
    from mddose.kinds.tree import predict_tree
    from mddose.train.checkpoint import load_checkpoint

    bundle = load_checkpoint(run[1])
    p = make_phantom(seed=40, size=32)
    dose, std = bundle.model_kind.predict(bundle, p, {"smooth": 0.0}, batch=1, seed=0, progress=False)
    assert std is None and dose.shape == p.shape and dose.dtype == np.float32
    assert (dose >= 0).all() and not dose[~p.dose_mask()].any() and dose[p.dose_mask()].any()
    np.testing.assert_array_equal(dose, predict_tree(bundle.model, p, bundle.data_config))
    # better than predicting nothing: the trees learned the dose
    mask = p.dose_mask()
    assert np.abs(dose - p.dose)[mask].mean() < 0.5 * np.abs(p.dose)[mask].mean()


def test_resume_returns_a_complete_fit_untouched(run):
    out, best, _ = run
    before = (out / "last" / "config.json").read_bytes()
    assert train(_cfg(), out, resume=True, progress=False) == best
    assert (out / "last" / "config.json").read_bytes() == before


def test_max_steps_and_the_time_budget_bound_the_trees(tmp_path):
    assert json.loads((train(_cfg(max_steps=3), tmp_path / "a", progress=False) / "config.json").read_text()
                      )["step"] == 3
    out = tmp_path / "b"
    from mddose.kinds.tree import ROUND

    train(_cfg(time_budget_s=0.0, model_overrides={"max_iter": 2 * ROUND}), out, progress=False)
    state = json.loads((out / "last" / "train_state.json").read_text())["state"]
    assert state["complete"] is False and state["step"] == ROUND   # one round, then the budget is spent


def test_init_is_refused_and_a_missing_sklearn_is_said_in_one_line(tmp_path, monkeypatch, run):
    with pytest.raises(MddoseError, match="fitted from the start, it cannot be fine-tuned"):
        train(_cfg(), tmp_path / "c", init=run[1])
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)
    with pytest.raises(MddoseError, match=r"needs scikit-learn: pip install 'mddose\[tree\]'"):
        train(_cfg(), tmp_path / "d", progress=False)


def test_the_built_in_tree_config_reads_as_a_tree_on_the_shared_patients():
    from mddose.train.config import builtin_config, load_train_config

    cfg = load_train_config(builtin_config("openkbp-tree"))
    assert cfg.kind.name == "tree" and cfg.model == "gbt" and cfg.inputs.voxels_per_patient == 20000
    assert "prior_dose" in cfg.inputs.channel_names and len(cfg.data.train) == 2


def test_a_fit_under_torchrun_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MddoseError, match="fitted in one process: run mddose train without torchrun"):
        train(_cfg(), tmp_path / "e", progress=False)
    assert not (tmp_path / "e").exists()


def test_smoothing_stays_inside_the_mask_keeps_a_constant_and_calms_noise():
    from mddose.kinds.tree import smooth_in_mask

    rng = np.random.default_rng(0)
    mask = np.zeros((12, 16, 16), bool)
    mask[2:10, 3:13, 4:12] = True
    const = np.where(mask, 50.0, 0).astype(np.float32)
    out = smooth_in_mask(const, mask, (2.5, 4.0, 4.0), 6.0)
    np.testing.assert_allclose(out[mask], 50.0, rtol=1e-5)              # the edge is not pulled towards 0
    assert not out[~mask].any() and out.dtype == np.float32
    noisy = np.where(mask, 50.0 + rng.normal(0, 5, mask.shape), 0).astype(np.float32)
    assert smooth_in_mask(noisy, mask, (2.5, 4.0, 4.0), 0.0) is noisy
    assert smooth_in_mask(noisy, mask, (2.5, 4.0, 4.0), 4.0)[mask].std() < 0.5 * noisy[mask].std()


def test_predict_and_export_take_the_smoothing_of_a_tree_only(run, tmp_path, capsys):
    from mddose.cli.main import main
    from mddose.data.formats.nifti import read_nifti_array
    from mddose.data.io import load_patient, save_patient
    from mddose.data.phantom import make_phantom
    from mddose.kinds.tree import predict_tree, smooth_in_mask
    from mddose.train.checkpoint import load_checkpoint

    p = make_phantom(seed=41, size=32)
    p.id = "pt_1"
    save_patient(p, tmp_path / "in" / "pt_1", "nifti")
    best = run[1]
    assert main(["export", str(best), str(tmp_path / "e"), "--smooth", "5"]) == 0
    assert json.loads((tmp_path / "e" / "config.json").read_text())["predict"] == {"smooth": 5.0}
    assert main(["predict", "--checkpoint", str(tmp_path / "e"), "--input", str(tmp_path / "in"), "--out",
                 str(tmp_path / "p"), "--format", "nifti"]) == 0
    bundle = load_checkpoint(best)
    p = load_patient(tmp_path / "in" / "pt_1")
    raw = predict_tree(bundle.model, p, bundle.data_config)
    got = read_nifti_array(tmp_path / "p" / "pt_1.nii.gz")[0]
    np.testing.assert_allclose(got, smooth_in_mask(raw, p.dose_mask(), p.spacing, 5.0), atol=1e-4)
    assert np.abs(got - raw).max() > 0.01                                # the recorded default was used
    assert main(["predict", "--checkpoint", str(tmp_path / "e"), "--input", str(tmp_path / "in"), "--out",
                 str(tmp_path / "q"), "--format", "nifti", "--smooth", "0"]) == 0
    np.testing.assert_allclose(read_nifti_array(tmp_path / "q" / "pt_1.nii.gz")[0], raw, atol=1e-4)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(best), "--input", str(tmp_path / "in"), "--out",
                 str(tmp_path / "r"), "--smooth", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--smooth: smooth must be 0 .. 20 mm, got -1.0" in err and err.count("\n") == 1
    assert main(["export", str(best), str(tmp_path / "f"), "--smooth", "nan"]) == 2
    assert "--smooth" in capsys.readouterr().err and not (tmp_path / "f").exists()
