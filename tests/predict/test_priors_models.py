"""Models that see the dose priors: trained, recorded in the checkpoint and predicted with the same channels."""

from __future__ import annotations

import numpy as np
import pytest

from mddose.data.phantom import make_phantom
from mddose.train.config import DataConfig, TrainConfig

PRIORS = {"names": ["sdf", "beam_sum", "prior_dose"]}


@pytest.mark.parametrize("model, inputs", [("md-dose", {"size": 32}), ("hd-unet", {"size": 16}),
                                           ("hd-unet", {"size": 16, "grid": "crop"})])
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


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """hd-unet tiny checkpoints: without priors, with scalar beam priors, with one channel per field."""
    from mddose.train.trainer import train

    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for name, priors in (("plain", None), ("scalar", {"names": ["beam_sum", "prior_dose"]}),
                         ("fields", {"names": ["beams"]})):
        cfg = TrainConfig(model="hd-unet", preset="tiny", inputs={"size": 16, "priors": priors},
                          data=DataConfig(phantoms={"n": 2, "seed": 0, "size": 32, "val": 0}),
                          epochs=1, batch_size=1, max_steps=1, val_every=0, device="cpu")
        train(cfg, root / name, progress=False)
        out[name] = root / name / "last"
    from mddose.data.phantom import write_phantoms
    write_phantoms(1, root / "pts", seed=9, size=32)
    out["patients"] = root / "pts"
    return out


@pytest.mark.parametrize("which, beams, match", [
    ("plain", "0,120,240", "was trained without beam priors"),
    ("fields", "0,120,240", "one input channel per field of its arrangement"),
    ("scalar", "0,nan", "not a finite number"),
    ("scalar", "zero,90", "expected gantry angles"),
    ("scalar", ",", "has no field"),
])
def test_beams_a_checkpoint_cannot_take_are_refused(checkpoints, tmp_path, capsys, which, beams, match):
    from mddose.cli.main import main

    rc = main(["predict", "--checkpoint", str(checkpoints[which]), "--input", str(checkpoints["patients"]),
               "--out", str(tmp_path / "p"), "--beams", beams])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "p").exists()


def test_beams_change_the_prediction_of_a_model_with_beam_priors(checkpoints, tmp_path):
    from mddose.data.formats.nifti import read_nifti_array
    from mddose.predict import predict_to_dir

    doses = []
    for i, beams in enumerate((None, "0,120,240")):
        predict_to_dir(checkpoints["scalar"], checkpoints["patients"], tmp_path / str(i), fmt="nifti", beams=beams,
                       progress=False)
        doses.append(read_nifti_array(next((tmp_path / str(i)).glob("*.nii.gz")))[0])
    assert np.isfinite(doses[1]).all() and not np.array_equal(doses[0], doses[1])
