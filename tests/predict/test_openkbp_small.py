"""The shipped checkpoint ``openkbp-small``: present in the package, intact, documented, and trained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mddose.predict import shipped
from mddose.train.checkpoint import load_checkpoint

NAME = "openkbp-small"


@pytest.fixture(scope="module")
def folder():
    found = shipped.shipped_checkpoints()
    assert NAME in found, f"{NAME} is not shipped in {shipped.SHIPPED_ROOT}"
    return found[NAME]


def test_is_a_small_prediction_only_export(folder):
    assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "config.json", "ema.safetensors", "validation.json"]
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


#: main's prediction of validation patient pt_201 (DDIM 2 steps, seed 0, batch 8), recorded before the kinds /
#: predict/ refactor of issue 19 (commit 007c245): the per-axial-slice sums of the whole (128, 128, 128) dose and
#: three full axial slices (z = 30, 60, 90), float32 Gy
REFERENCE = Path(__file__).with_name("data") / "openkbp_small_pt_201.npz"


@pytest.fixture(scope="module")
def pt_201(openkbp_dir):
    from mddose.data.io import load_patient

    return load_patient(openkbp_dir / "validation-pats" / "pt_201")


@pytest.fixture(scope="module")
def predicted(folder, pt_201):
    from mddose.predict import predict_patient

    return predict_patient(load_checkpoint(folder), pt_201, steps=2, progress=False).dose


def test_predicts_a_real_patient_like_a_dose(predicted, pt_201):
    """A trained model puts about the prescription into the PTV70 and much less far from it (2 DDIM steps)."""
    patient, dose = pt_201, predicted
    assert np.isfinite(dose).all() and dose.min() >= 0
    ptv70 = patient.masks["PTV70"]
    mean_ptv70 = float(dose[ptv70].mean())
    assert 55.0 < mean_ptv70 < 80.0, mean_ptv70
    outside = patient.possible_dose_mask & ~ptv70
    assert float(np.abs(dose - patient.dose)[ptv70].mean()) < 10.0
    assert float(dose[outside].mean()) < mean_ptv70


def test_prediction_is_what_it_was_before_the_refactor(predicted):
    """The shipped checkpoint still loads and predicts what it did (:data:`REFERENCE`), to float32 rounding.

    Tolerance: on the machine that recorded it the prediction is bitwise the same with 1 and 2 torch threads;
    what may differ elsewhere is the order of float32 sums inside the network (BLAS / conv kernels), a few ulps
    per operation. 1e-4 Gy is ~13 ulps of float32 at 80 Gy (ulp 7.6e-6) and 1e-5 relative — far below any
    change in the model, the sampler, its noise or the slice geometry (one changed step or seed moves voxels by
    whole Gy)."""
    ref = np.load(REFERENCE)
    assert predicted.shape == (128, 128, 128) and predicted.dtype == np.float32
    np.testing.assert_allclose(predicted[ref["z"]], ref["slices"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(predicted.sum(axis=(1, 2), dtype=np.float64), ref["slice_sums"], rtol=1e-5, atol=1e-2)
