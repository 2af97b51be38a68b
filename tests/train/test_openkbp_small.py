"""The shipped checkpoint ``openkbp-small``: present in the package, intact, documented, and trained."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mddose.train import shipped
from mddose.train.checkpoint import load_checkpoint

NAME = "openkbp-small"


@pytest.fixture(scope="module")
def folder():
    found = shipped.shipped_checkpoints()
    assert NAME in found, f"{NAME} is not shipped in {shipped.SHIPPED_ROOT}"
    return found[NAME]


def test_is_a_small_prediction_only_export(folder):
    assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "config.json", "ema.safetensors"]
    assert sum(p.stat().st_size for p in folder.iterdir()) < 20 * 2**20
    assert json.loads((folder / "config.json").read_text())["export"] == "prediction"


def test_loads_with_its_checksums_and_the_config_it_was_trained_with(folder):
    bundle = load_checkpoint(folder)                 # verifies sizes, SHA-256 and finite weights
    assert bundle.kind == "diffusion" and bundle.slice_config.size == 128
    assert bundle.diffusion.prediction == "x0"
    train = bundle.train_config
    assert (train.model, train.preset, train.recipe) == ("md-dose", "small", "paper")
    sources = train.data.train
    assert not any("validation" in s for s in sources), sources          # never trained on the validation set


def test_records_the_sampler_it_was_scored_with(folder):
    """x0-prediction: 5 DDIM steps score as 10 (BENCHMARKS.md); `predict` without options uses them."""
    from mddose.predict import checkpoint_defaults, resolve_options

    bundle = load_checkpoint(folder)
    assert checkpoint_defaults(bundle) == {"steps": 5}
    opts = resolve_options(bundle.kind, "md-dose", checkpoint_defaults(bundle))
    assert (opts["sampler"], opts["steps"]) == ("ddim", 5)
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "DDIM 5 steps" in card


def test_model_card_says_what_a_user_must_know(folder):
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    for needle in ("train-pats", "extra-train-pats", "mddose train --config openkbp-cpu", "Dose score",
                   "DVH score", "validation", "not for clinical use"):
        assert needle in card, needle
    assert [s for s in shipped.shipped_summary() if s["name"] == NAME][0]["model"] == "md-dose"


def test_predicts_a_real_patient_like_a_dose(folder, openkbp_dir):
    """A trained model puts about the prescription into the PTV70 and much less far from it (2 DDIM steps)."""
    from mddose.data.io import load_patient
    from mddose.predict import predict_patient

    patient = load_patient(openkbp_dir / "validation-pats" / "pt_201")
    pred = predict_patient(load_checkpoint(folder), patient, steps=2, progress=False)
    dose = pred.dose
    assert np.isfinite(dose).all() and dose.min() >= 0
    ptv70 = patient.masks["PTV70"]
    mean_ptv70 = float(dose[ptv70].mean())
    assert 55.0 < mean_ptv70 < 80.0, mean_ptv70
    outside = patient.possible_dose_mask & ~ptv70
    assert float(np.abs(dose - patient.dose)[ptv70].mean()) < 10.0
    assert float(dose[outside].mean()) < mean_ptv70
