"""The shipped checkpoints trained with the plan's geometry (issue 18): ``openkbp-tree`` and
``openkbp-md-dose-priors`` — present, intact, documented, and scoring what their cards say."""

from __future__ import annotations

import json
import re

import pytest

from mddose.predict import shipped
from mddose.train.checkpoint import load_checkpoint

PRIORS = {"sdf", "beams", "beam_sum", "prior_dose"}
#: name → (kind, model, the prediction defaults recorded at export, the train config's name, size limit MB)
SHIPPED = {"openkbp-tree": ("tree", "gbt", {"smooth": 3.0}, "openkbp-tree", 5),
           "openkbp-md-dose-priors": ("diffusion", "md-dose", {"steps": 5}, "openkbp-md-dose-priors", 20)}


def _folder(name):
    found = shipped.shipped_checkpoints()
    assert name in found, f"{name} is not shipped in {shipped.SHIPPED_ROOT}"
    return found[name]


def _card(name) -> str:
    return (_folder(name) / "MODEL_CARD.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", SHIPPED)
def test_is_a_prediction_only_export_with_the_priors(name):
    from mddose.predict import checkpoint_defaults

    kind, model, defaults, _, mb = SHIPPED[name]
    folder = _folder(name)
    assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "config.json", "ema.safetensors",
                                                        "validation.json"]
    assert sum(p.stat().st_size for p in folder.iterdir()) < mb * 2**20
    bundle = load_checkpoint(folder)                 # verifies sizes, SHA-256 and finite weights
    assert (bundle.kind, bundle.train_config.model) == (kind, model)
    assert set(bundle.data_config.priors.names) == PRIORS
    assert not any("validation" in s for s in bundle.train_config.data.train)   # never trained on validation
    assert checkpoint_defaults(bundle) == defaults


@pytest.mark.parametrize("name", SHIPPED)
def test_card_says_what_a_user_must_know_and_validation_json_agrees(name):
    card = _card(name)
    config = SHIPPED[name][3]
    for needle in ("train-pats", "extra-train-pats", f"mddose train --config {config}", "Dose score",
                   "DVH score", "not for clinical use", "Limitations"):
        assert needle in card, needle
    val = json.loads((_folder(name) / "validation.json").read_text())
    m = re.search(r"Dose score \*\*([\d.]+) Gy\*\*, DVH score \*\*([\d.]+) Gy\*\*", card)
    assert m and (float(m[1]), float(m[2])) == (round(val["dose_score"], 2), round(val["dvh_score"], 2))
    [row] = [s for s in shipped.shipped_summary() if s["name"] == name]
    assert row["model"] == SHIPPED[name][1] and row["validation"]["patients"] == 8


@pytest.mark.parametrize("name", SHIPPED)
def test_predicting_pt_201_gives_the_cards_errors(name, openkbp_dir):
    """``predict`` with the checkpoint's defaults, scored like ``evaluate``: the card's row for pt_201 (its 2
    decimals)."""
    from mddose.data.io import load_patient
    from mddose.evaluate.openkbp import dvh_differences, score_patient
    from mddose.predict import predict_patient

    p = load_patient(openkbp_dir / "validation-pats" / "pt_201")
    dose = predict_patient(load_checkpoint(_folder(name)), p).dose
    err, ref, pred = score_patient(p.dose, dose, p.masks, p.dose_mask(), p.spacing, p.prescriptions)
    diffs = dvh_differences(ref, pred)
    row = re.search(r"\| pt_201 \| ([\d.]+) \| ([\d.]+) \|", _card(name))
    assert (round(err, 2), round(sum(diffs.values()) / len(diffs), 2)) == (float(row[1]), float(row[2]))
