"""Objectives: the model's kind (its registry entry's) gives the loss, the data and the validation; one trainer."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mddose.errors import MddoseError
from mddose.train.config import DataConfig, TrainConfig
from mddose.kinds.diffusion2d import DiffusionObjective
from mddose.kinds.regression3d import RegressionObjective


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: fastest single-threaded


@pytest.mark.parametrize("model,cls", [("md-dose", DiffusionObjective), ("diffdp", DiffusionObjective),
                                       ("sp-diffdose", DiffusionObjective), ("c3d", RegressionObjective),
                                       ("hd-unet", RegressionObjective)])
def test_objective_follows_the_registry_kind(model, cls):
    from mddose.models import kind_of, model_info
    cfg = TrainConfig(model=model).resolved()
    assert cfg.kind is kind_of(model) and cfg.kind.name == model_info(model).kind
    assert isinstance(cfg.kind.objective(cfg), cls)
    assert isinstance(cfg.inputs, cfg.kind.input_config)          # parsed once, into the kind's type


def test_masked_l1_counts_only_masked_voxels():
    pred = torch.zeros(1, 1, 2, 2, 2)
    target = torch.ones(1, 1, 2, 2, 2)
    target[0, 0, 0] = 5.0                       # large error outside the mask
    mask = torch.zeros(1, 1, 2, 2, 2)
    mask[0, 0, 1] = 1.0
    assert RegressionObjective.masked_l1(pred, target, mask).item() == pytest.approx(1.0)
    assert RegressionObjective.masked_l1(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_regression_loss_weights_the_cascade_outputs():
    """C3D's loss is 0.5 · L1(A) + L1(B) over the possible-dose mask."""
    from mddose.models import build_model
    torch.manual_seed(0)
    model = build_model("c3d", preset="tiny", in_channels=3)
    obj = RegressionObjective(TrainConfig(model="c3d").resolved())
    cond = torch.randn(1, 3, 16, 16, 16)
    batch = {"cond": cond, "dose": torch.rand(1, 1, 16, 16, 16), "mask": (torch.rand(1, 1, 16, 16, 16) > 0.5).float()}
    loss = obj.loss(obj.train_module(model), batch, torch.Generator(), 1, 0, torch.device("cpu"))
    (wa, a), (wb, b) = model.training_outputs(cond)
    assert (wa, wb) == (0.5, 1.0)
    expect = 0.5 * obj.masked_l1(a, batch["dose"], batch["mask"]) + obj.masked_l1(b, batch["dose"], batch["mask"])
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)
    torch.testing.assert_close(b, model(cond))


def _volume_config(**kw) -> TrainConfig:
    base = dict(model="hd-unet", preset="tiny", data=DataConfig(phantoms={"n": 2, "size": 32, "val": 1}),
                recipe="c3d", epochs=50, batch_size=2, device="cpu", val_every=25, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_regression_training_learns_and_keeps_the_best(tmp_path):
    """The 3D path end to end in the trainer: loss falls, validation scores are written, best/ is kept."""
    from mddose.train.checkpoint import load_checkpoint
    from mddose.train.trainer import train

    cfg = _volume_config(lr=3e-3, inputs={"size": 16, "rotate": False, "translate": 0})
    best = train(cfg, tmp_path / "run", progress=False)
    rows = (tmp_path / "run" / "logs" / "train.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[2]) for r in rows]
    assert len(losses) == 50 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    val = (tmp_path / "run" / "logs" / "val.csv").read_text().splitlines()[1:]
    assert len(val) == 2 and all(np.isfinite(float(v.split(",")[2])) for v in val)
    b = load_checkpoint(best)
    assert b.kind == "regression" and b.diffusion is None and b.slice_config is None
    assert b.volume_config.size == 16 and b.model.config.grid_size == 16
    meta = json.loads((best / "config.json").read_text())
    assert meta["train_config"]["amsgrad"] is True and meta["train_config"]["lr_schedule"] == "cosine"
    # each setting once: the grid as the input config's size, the input config outside the train config
    assert "grid_size" not in meta["model"] and meta["volume_config"]["size"] == 16
    assert "volume" not in meta["train_config"] and b.train_config.inputs == b.volume_config
    assert meta["volume_config"]["grid"] == "resample"
    for key in ("grid", "crop_margin", "crop_predict"):      # a checkpoint written before the geometry choice loads unchanged
        del meta["volume_config"][key]
    from mddose.train.integrity import SEAL_KEY, seal
    (best / "config.json").write_text(json.dumps(seal({k: v for k, v in meta.items() if k != SEAL_KEY})))
    assert load_checkpoint(best).volume_config == b.volume_config


@pytest.mark.parametrize("model,key", [("c3d", "slices"), ("md-dose", "volume")])
def test_data_section_of_the_other_kind_is_refused(model, key):
    with pytest.raises(MddoseError, match=f"^cfg.json: '{key}' is for .* models; {model} is a .* model"):
        TrainConfig.from_dict({"model": model, key: {"size": 32}}, "cfg.json")


@pytest.mark.parametrize("key", ["grid_size", "image_size"])
def test_the_grid_is_the_datas(key):
    """One place sets the grid (the input config's size); the model config takes it from the data."""
    from mddose.train.trainer import model_config_for

    with pytest.raises(MddoseError, match=f"^cfg.json: model_overrides.{key}: the grid is the data's"):
        TrainConfig.from_dict({"model": "c3d", "model_overrides": {key: 32}}, "cfg.json")
    cfg = TrainConfig.from_dict({"model": "c3d", "preset": "tiny", "volume": {"size": 32}})
    assert cfg.inputs.size == 32 and model_config_for(cfg, cfg.inputs.channels).grid_size == 32
    assert TrainConfig.from_dict({"model": "c3d", "preset": "small"}).inputs.size == 64    # the preset's grid


def test_unknown_structure_encoder_is_refused_before_any_data(tmp_path):
    from mddose.train.trainer import train

    cfg = _volume_config(model="md-dose", model_overrides={"structure_encoder": "lstm"},
                         data=DataConfig(train=str(tmp_path / "nowhere")))
    with pytest.raises(MddoseError, match="structure_encoder"):
        train(cfg, tmp_path / "run", progress=False)


def test_crop_training_records_the_geometry_and_prediction_uses_it(tmp_path):
    """grid "crop" end to end: 2 steps of hd-unet tiny on 16³ patches, then a whole crop that is no multiple of
    2^(levels-1) = 4 predicted through the checkpoint (TTA), zero outside its box and the possible-dose mask."""
    from mddose.data.inputs.volume_crop import crop_box, predict_crop
    from mddose.data.phantom import make_phantom
    from mddose.predict.patient import predict_patient
    from mddose.train.checkpoint import load_checkpoint
    from mddose.train.trainer import train

    cfg = _volume_config(epochs=1, batch_size=1, val_every=1, inputs={"size": 16, "grid": "crop", "crop_margin": 1})
    best = train(cfg, tmp_path / "run", progress=False)
    assert len((tmp_path / "run" / "logs" / "train.csv").read_text().splitlines()[1:]) == 2
    val = (tmp_path / "run" / "logs" / "val.csv").read_text().splitlines()[1:]
    assert len(val) == 1 and np.isfinite(float(val[0].split(",")[2]))
    meta = json.loads((best / "config.json").read_text())
    assert meta["volume_config"]["grid"] == "crop" and meta["volume_config"]["crop_margin"] == 1
    b = load_checkpoint(best)
    assert b.volume_config.grid == "crop" and b.model.config.grid_size == 16
    p = make_phantom(7, 32)
    box = crop_box(p.dose_mask(), 1)
    assert any((s.stop - s.start) % 4 for s in box)
    dose = predict_patient(b, p, tta=True).dose
    with torch.no_grad():
        expect = predict_crop(b.model, p, b.volume_config, 4, tta=True)
    np.testing.assert_array_equal(dose, expect)
    inside = np.zeros(p.shape, bool)
    inside[box] = True
    assert dose.shape == p.shape and (dose[~(inside & p.dose_mask())] == 0).all() and dose.max() > 0
    assert b.volume_config.crop_predict == "windows"
    with torch.no_grad():                    # the whole crop in one pass (padded to a multiple of 4)
        whole = predict_crop(b.model, p, dataclasses.replace(b.volume_config, crop_predict="whole"), 4)
    assert whole.shape == p.shape and (whole[~(inside & p.dose_mask())] == 0).all() and not np.array_equal(whole, dose)
