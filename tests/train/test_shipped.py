"""Shipped checkpoints: prediction-only export, names resolved by `predict`, listed by `models`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mddose.cli.main import main
from mddose.data.inputs.slices import SliceConfig
from mddose.data.io import save_patient
from mddose.data.phantom import make_phantom
from mddose.diffusion import GaussianDiffusion
from mddose.errors import MddoseError
from mddose.models import build_model
from mddose.predict import shipped
from mddose.train.checkpoint import checkpoint_config, export_for_prediction, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    cfg = SliceConfig.for_phantoms(size=32)
    model = build_model("md-dose", preset="tiny", in_channels=cfg.channels)
    path = tmp_path_factory.mktemp("ck") / "best"
    conf = checkpoint_config(model, data_config={"slice_config": cfg.to_dict()},
                             train_config={"model": "md-dose", "preset": "tiny"},
                             diffusion=GaussianDiffusion().to_dict(), step=7, epoch=0)
    save_checkpoint(path, model=model, ema=model, config=conf)
    return path


def test_export_keeps_the_prediction_and_halves_the_files(trained, tmp_path):
    out = export_for_prediction(trained, tmp_path / "exp", card="# tiny test model\n")
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "config.json", "ema.safetensors"]
    a, b = load_checkpoint(trained), load_checkpoint(out)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert json.loads((out / "config.json").read_text())["export"] == "prediction"
    with pytest.raises(MddoseError, match="no raw"):
        load_checkpoint(out, raw=True)
    with pytest.raises(MddoseError, match="exists"):
        export_for_prediction(trained, out)


def test_exported_weights_are_checked(trained, tmp_path):
    out = export_for_prediction(trained, tmp_path / "exp")
    w = out / "ema.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(MddoseError, match="SHA-256"):
        load_checkpoint(out)


def test_names_resolve_to_shipped_folders_and_unknown_names_list_them(trained, tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    export_for_prediction(trained, root / "phantom-tiny", card="# Phantom tiny\n")
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", root)
    assert shipped.resolve_checkpoint("phantom-tiny") == root / "phantom-tiny"
    assert shipped.resolve_checkpoint(trained) == trained                        # a path is used as it is
    with pytest.raises(MddoseError, match=r"no shipped checkpoint named 'nope' \(shipped: phantom-tiny\)"):
        shipped.resolve_checkpoint("nope")
    [s] = shipped.shipped_summary()
    assert (s["name"], s["model"], s["preset"], s["card"]) == ("phantom-tiny", "md-dose", "tiny", "Phantom tiny")


def test_cli_predict_by_name_and_models_lists_it(trained, tmp_path, monkeypatch, capsys):
    root = tmp_path / "checkpoints"
    export_for_prediction(trained, root / "phantom-tiny")
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", root)
    p = make_phantom(4, 32)
    p.id = "pt_1"
    save_patient(p, tmp_path / "in" / "pt_1", "nifti")
    assert main(["predict", "--checkpoint", "phantom-tiny", "--input", str(tmp_path / "in"), "--out",
                 str(tmp_path / "pred"), "--steps", "2", "--format", "nifti"]) == 0
    from mddose.data.formats.nifti import read_nifti_array
    dose = read_nifti_array(tmp_path / "pred" / "pt_1.nii.gz")[0]
    assert dose.shape == p.shape and np.isfinite(dose).all()
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    rows = {(r["name"], r["preset"]): r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows[("md-dose", "tiny")]["shipped"] == ["phantom-tiny"] and rows[("c3d", "tiny")]["shipped"] == []
    rc = main(["predict", "--checkpoint", "openkbp-huge", "--input", str(tmp_path / "in"), "--out",
               str(tmp_path / "p2")])
    err = capsys.readouterr().err
    assert rc == 2 and "shipped: phantom-tiny" in err and err.count("\n") == 1


def test_cli_export(trained, tmp_path, capsys):
    card = tmp_path / "card.md"
    card.write_text("# Card\n")
    assert main(["export", str(trained), str(tmp_path / "e"), "--card", str(card)]) == 0
    assert (tmp_path / "e" / "MODEL_CARD.md").read_text() == "# Card\n"
    assert main(["export", str(trained), str(tmp_path / "e")]) == 2


def test_export_records_the_sampler_defaults_predict_uses(trained, tmp_path, monkeypatch):
    """`export --steps 3` → `predict` without options samples with 3 steps; a given option still wins."""
    from mddose import predict as pred_mod

    out = export_for_prediction(trained, tmp_path / "exp", predict={"steps": 3})
    bundle = load_checkpoint(out)
    assert json.loads((out / "config.json").read_text())["predict"] == {"steps": 3}
    seen = []
    kind = bundle.model_kind
    real = kind.predict
    monkeypatch.setattr(kind, "predict", lambda b, p, opts, **kw: (seen.append(opts), real(b, p, opts, **kw))[1])
    p = make_phantom(4, 32)
    pred_mod.predict_patient(bundle, p)
    pred_mod.predict_patient(bundle, p, steps=2, sampler="dpmpp2m")
    assert [(o["sampler"], o["steps"]) for o in seen] == [("ddim", 3), ("dpmpp2m", 2)]
    assert pred_mod.checkpoint_defaults(load_checkpoint(trained)) == {}        # none recorded: the global ones


@pytest.mark.parametrize("predict, match", [
    ({"steps": 0}, "predict.steps"), ({"sampler": "euler"}, "predict.sampler"), ({"tta": False}, "only for 3D regression models"),
    ({"steps": "5"}, "predict.steps"), ({"eta": -1.0}, "predict.eta"),
])
def test_bad_sampler_defaults_are_refused_before_export(trained, tmp_path, predict, match):
    with pytest.raises(MddoseError, match=match):
        export_for_prediction(trained, tmp_path / "exp", predict=predict)
    assert not (tmp_path / "exp").exists()


def test_cli_export_steps(trained, tmp_path, monkeypatch):
    assert main(["export", str(trained), str(tmp_path / "e"), "--steps", "5", "--sampler", "ddim"]) == 0
    assert json.loads((tmp_path / "e" / "config.json").read_text())["predict"] == {"sampler": "ddim", "steps": 5}
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", tmp_path)
    assert [r["predict"] for r in shipped.shipped_summary() if r["name"] == "e"] == [{"sampler": "ddim", "steps": 5}]
    assert main(["export", str(trained), str(tmp_path / "f"), "--steps", "0"]) == 2
