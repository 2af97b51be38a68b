"""The residual form of the 3D models: the network predicts dose minus the prior dose (an input channel)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mddose.errors import MddoseError
from mddose.models import build_model, make_config
from mddose.train.config import DataConfig, TrainConfig

PRIORS = {"names": ["sdf", "prior_dose"]}


@pytest.mark.parametrize("model", ["c3d", "hd-unet"])
def test_the_residual_channel_is_added_to_every_output(model):
    cfg = make_config(model, "tiny", in_channels=4, grid_size=16)
    torch.manual_seed(0)
    plain = build_model(cfg)
    residual = build_model(dataclasses.replace(cfg, residual_channel=3))
    residual.load_state_dict(plain.state_dict())                  # the same weights, no new parameter
    cond = torch.randn(1, 4, 16, 16, 16)
    torch.testing.assert_close(residual(cond), plain(cond) + cond[:, 3:4])
    for (wr, r), (wp, p) in zip(residual.training_outputs(cond), plain.training_outputs(cond)):
        assert wr == wp
        torch.testing.assert_close(r, p + cond[:, 3:4])


@pytest.mark.parametrize("model", ["c3d", "hd-unet"])
@pytest.mark.parametrize("channel", [-1, 4, True, 1.0])
def test_a_residual_channel_outside_the_inputs_is_refused(model, channel):
    with pytest.raises(MddoseError, match="residual_channel must be an input channel"):
        make_config(model, "tiny", in_channels=4, residual_channel=channel)


def _cfg(**inputs) -> TrainConfig:
    return TrainConfig(model="hd-unet", preset="tiny", inputs={"size": 16, **inputs},
                       data=DataConfig(phantoms={"n": 2, "seed": 0, "size": 32, "val": 0}),
                       epochs=1, batch_size=1, max_steps=1, val_every=0, device="cpu")


def test_the_train_config_writes_the_prior_dose_channel_into_the_model_config():
    from mddose.train.trainer import model_config_for

    cfg = _cfg(priors=PRIORS, residual=True)
    k = cfg.inputs.channel_names.index("prior_dose")
    assert cfg.inputs.residual_channel == k == cfg.inputs.channels - 1
    assert model_config_for(cfg, cfg.inputs.channels).residual_channel == k
    assert model_config_for(_cfg(priors=PRIORS), cfg.inputs.channels).residual_channel is None


@pytest.mark.parametrize("build, message", [
    (lambda: _cfg(residual=True), "residual needs the prior dose as an input"),
    (lambda: _cfg(priors={"names": ["sdf"]}, residual=True), "residual needs the prior dose as an input"),
    (lambda: _cfg(residual="yes"), "residual must be true or false"),
    (lambda: dataclasses.replace(_cfg(), model_overrides={"residual_channel": 3}),
     "model_overrides.residual_channel: set volume.residual instead"),
])
def test_bad_residual_settings_are_refused_in_one_line(build, message):
    with pytest.raises(MddoseError, match=message):
        build()


def test_a_residual_model_trains_and_predicts_prior_plus_correction(tmp_path):
    from mddose.data.phantom import make_phantom
    from mddose.predict.patient import predict_patient
    from mddose.train.checkpoint import load_checkpoint
    from mddose.train.trainer import train

    cfg = _cfg(priors=PRIORS, residual=True)
    train(cfg, tmp_path / "run", progress=False)
    b = load_checkpoint(tmp_path / "run" / "last")
    assert b.model.config.residual_channel == cfg.inputs.residual_channel and b.data_config.residual
    pred = predict_patient(b, make_phantom(7, 32), tta=False)
    assert np.isfinite(pred.dose).all() and pred.dose.max() > 0
