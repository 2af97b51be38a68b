"""Models that see the dose priors: trained, recorded in the checkpoint and predicted with the same channels."""

from __future__ import annotations

import numpy as np
import pytest

from mddose.data.phantom import make_phantom
from mddose.train.config import DataConfig, TrainConfig

PRIORS = {"names": ["sdf", "beam_sum", "prior_dose"]}


@pytest.mark.parametrize("model, inputs", [("md-dose", {"size": 32}), ("hd-unet", {"size": 16})])
def test_train_and_predict_with_priors(tmp_path, model, inputs):
    from mddose.predict.patient import predict_patient
    from mddose.train.checkpoint import load_checkpoint
    from mddose.train.trainer import train

    cfg = TrainConfig(model=model, preset="tiny", inputs={**inputs, "priors": PRIORS},
                      data=DataConfig(phantoms={"n": 2, "seed": 0, "size": 32, "val": 1}, val_max_slices=2),
                      epochs=1, batch_size=2, max_steps=2, val_steps=2, device="cpu")
    train(cfg, tmp_path / "run", progress=False)
    b = load_checkpoint(tmp_path / "run" / "last")
    assert b.data_config.priors == cfg.inputs.priors                        # recorded with the weights
    assert b.data_config.prior_names == ("sdf_PTV", "sdf_targets", "beam_sum", "prior_dose")
    assert b.model.config.in_channels == b.data_config.channels == 12      # the network takes the prior channels
    opts = {"steps": 2} if model == "md-dose" else {"tta": True}
    pred = predict_patient(b, make_phantom(7, 32), **opts)
    assert np.isfinite(pred.dose).all() and pred.dose.max() > 0
