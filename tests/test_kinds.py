"""A new kind of model is one module and one registry line: this test module is that module.

It defines a toy kind (its input config, data, objective and predictor), registers it and a toy model under it,
then trains the model one step, predicts held-out phantoms into files and evaluates them — through the package's
own ``train``, ``predict_to_dir`` and ``evaluate_predictions``, with no file of the package touched. The built-in
kinds are checked to be what the registry, the checkpoints and prediction go by.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mddose.data.phantom import PHANTOM_OARS
from mddose.errors import MddoseError
from mddose.kinds import ModelKind, TrainData, all_kinds, get_kind, register_kind
from mddose.models import registry

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- the toy kind
@dataclass(frozen=True)
class ToyInputs:
    """The toy kind's input config: the PTV mask of the whole grid is the one input channel."""

    targets: tuple[str, ...] = ("PTV70",)
    oars: tuple[str, ...] = ()
    reference_dose: float = 70.0
    size: int = 0                      # the data's grid (not resampled: the patient's own)

    @classmethod
    def for_phantoms(cls) -> "ToyInputs":
        return cls(targets=("PTV",), oars=tuple(PHANTOM_OARS))

    @property
    def channels(self) -> int:
        return 1

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _ptv(patient, cfg: ToyInputs) -> torch.Tensor:
    """(1, Z, Y, X) float32: the union of the patient's targets."""
    mask = np.zeros(patient.shape, bool)
    for t in cfg.targets:
        mask |= patient.masks.get(t, np.zeros(patient.shape, bool))
    return torch.from_numpy(mask[None].astype(np.float32))


class ToyObjective:
    def __init__(self, cfg):
        self.cfg = cfg

    def train_module(self, model: nn.Module) -> nn.Module:
        return model

    def loss(self, net, batch, noise_gen, global_batch, rank, device):
        """Mean squared error of ``net(cond)`` against dose / reference, (B, 1, Z, Y, X)."""
        return ((net(batch["cond"].to(device)) - batch["dose"].to(device)) ** 2).mean()

    def validator(self, cfg, data, device):
        def validate(model: nn.Module) -> float:
            with torch.no_grad():
                errors = [float((model(_ptv(p, data.data_config)[None])[0, 0].numpy() * 70.0 - p.dose).__abs__().mean())
                          for p in data.val_patients]
            return float(np.mean(errors))
        return validate


class ToyKind(ModelKind):
    """Predicts dose = scale · PTV on the patient's own grid; option ``scale`` multiplies the prediction."""

    name = "toy"
    words = "toy model"
    section = "toy"
    data_key = "toy_inputs"
    input_config = ToyInputs
    options = {"scale": 1.0}

    def build_data(self, cfg, *, progress: bool = False) -> TrainData:
        from mddose.data.sources import training_sources

        train, val, _, skipped = training_sources(cfg.data)
        items = [{"cond": _ptv(p, cfg.inputs), "dose": torch.from_numpy(p.dose[None] / 70.0).float()} for p in train]
        return TrainData(train=items, val_patients=val, data_config=cfg.inputs, channels=1, skipped=skipped)

    def objective(self, cfg) -> ToyObjective:
        return ToyObjective(cfg)

    def predict(self, bundle, patient, opts: dict, *, batch: int, seed: int, progress: bool):
        with torch.no_grad():
            out = bundle.model(_ptv(patient, bundle.data_config)[None])[0, 0].numpy()
        return (out * bundle.data_config.reference_dose * opts["scale"]).astype(np.float32), None

    def iteration(self, model: nn.Module, channels: int, size: int, device: str = "cpu"):
        c = torch.rand(1, channels, size, size, size)
        return (lambda: model(c)), f"toy forward, {size}³"


@dataclass(frozen=True)
class ToyConfig(registry.ModelConfig):
    in_channels: int = 1
    start: float = 0.5


class ToyScale(nn.Module):
    """``model(cond (B, 1, Z, Y, X)) -> scale · cond``: one learnable number."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(cfg.start)))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.scale * cond


@pytest.fixture(scope="module")
def toy():
    """The toy kind and the toy model registered (the 'one registry line' of each), and removed afterwards."""
    kind = register_kind(ToyKind())
    registry.register_model("toy-scale", ToyConfig, kind="toy", dims=3, fidelity="reconstruction",
                            source="tests/test_kinds.py")(ToyScale)
    yield kind
    from mddose.kinds import base
    base._KINDS.pop("toy")
    registry._NAME_OF.pop(registry._REGISTRY.pop("toy-scale").config_cls)


def test_a_toy_kind_trains_predicts_and_is_evaluated_with_no_package_file_touched(toy, tmp_path):
    from mddose.data.phantom import write_phantoms
    from mddose.evaluate.run import evaluate_predictions
    from mddose.predict import predict_to_dir
    from mddose.train.checkpoint import load_checkpoint
    from mddose.train.config import TrainConfig
    from mddose.train.trainer import train

    cfg = TrainConfig.from_dict({"model": "toy-scale", "preset": None, "toy": {"reference_dose": 70.0},
                                 "data": {"phantoms": {"train": 2, "val": 1, "size": 32}}, "recipe": "public",
                                 "lr": 0.05, "batch_size": 2, "epochs": 1, "max_steps": 1, "device": "cpu"}, "toy.json")
    assert cfg.kind is toy and isinstance(cfg.inputs, ToyInputs) and cfg.inputs.targets == ("PTV",)
    best = train(cfg, tmp_path / "run", progress=False)
    meta = json.loads((best / "config.json").read_text())
    assert meta["kind"] == "toy" and meta["step"] == 1 and meta["toy_inputs"]["targets"] == ["PTV"]
    assert "toy" not in meta["train_config"]                       # the input config is stored once
    bundle = load_checkpoint(best)
    assert bundle.model_kind is toy and bundle.data_config == cfg.inputs and bundle.model.scale.item() != 0.5
    assert bundle.train_config.inputs == cfg.inputs

    test_dir = tmp_path / "test"
    write_phantoms(2, test_dir, seed=cfg.data.phantoms.seeds("test").start, size=32, format="nifti")
    done, errors = predict_to_dir(best, test_dir, tmp_path / "pred", fmt="nifti", progress=False)
    assert sorted(done) == ["pt_1", "pt_2"] and errors == []
    assert json.loads((tmp_path / "pred" / "predict.json").read_text())["scale"] == 1.0   # the kind's default
    result = evaluate_predictions(test_dir, tmp_path / "pred")
    assert math.isfinite(result.dose_score) and result.dose_score > 0


def test_a_toy_kinds_options_are_its_own(toy):
    from mddose.predict.options import resolve_options

    assert resolve_options("toy", "toy-scale", {}, scale=2.0) == {"scale": 2.0}
    with pytest.raises(MddoseError, match="--steps: only for 2D diffusion models; toy-scale is a toy model"):
        resolve_options("toy", "toy-scale", {}, steps=5)
    with pytest.raises(MddoseError, match="--scale: only for toy models; md-dose is a 2D diffusion model"):
        resolve_options("diffusion", "md-dose", {}, scale=2.0)
    with pytest.raises(MddoseError, match="scale must be like 1.0"):
        resolve_options("toy", "toy-scale", {}, scale="big")


# ---------------------------------------------------------------------------------------------- built-in kinds
@pytest.mark.parametrize("model, kind, section, data_key", [
    ("md-dose", "diffusion", "slices", "slice_config"), ("diffdp", "diffusion", "slices", "slice_config"),
    ("sp-diffdose", "diffusion", "slices", "slice_config"), ("c3d", "regression", "volume", "volume_config"),
    ("hd-unet", "regression", "volume", "volume_config"), ("gbt", "tree", "features", "feature_config"),
])
def test_every_registry_entry_points_to_its_kind(model, kind, section, data_key):
    k = registry.kind_of(model)
    assert k is get_kind(kind) is all_kinds()[kind] and registry.model_info(model).kind == kind
    assert (k.section, k.data_key) == (section, data_key)
    assert registry.kind_of(registry.make_config(model, "tiny")) is k


def test_an_unknown_kind_is_refused_in_one_line():
    with pytest.raises(MddoseError, match="register_model\\('x'\\): unknown model kind 'gan'; known: diffusion"):
        registry.register_model("x", ToyConfig, kind="gan")
    with pytest.raises(RuntimeError, match="registered twice"):
        register_kind(get_kind("diffusion"))


@pytest.mark.parametrize("kind, options", [("diffusion", {"sampler": "ddim", "steps": 10, "eta": 0.0, "samples": 1}),
                                           ("regression", {"tta": True}), ("tree", {"smooth": 0.0})])
def test_prediction_options_have_one_default_each_owned_by_the_kind(kind, options):
    from mddose.predict.options import resolve_options

    assert get_kind(kind).options == options == resolve_options(kind)
