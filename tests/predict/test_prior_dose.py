"""The prior dose as a method: ``mddose predict --checkpoint prior-dose`` (kind "prior", nothing trained), and
``mddose models --json`` listing every shipped checkpoint with its measured validation scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mddose.cli.main import main
from mddose.data.io import load_patient
from mddose.data.priors import PriorsSpec, compute_priors
from mddose.errors import MddoseError


def test_predict_prior_dose_writes_the_prior(openkbp_dir, tmp_path):
    from mddose.data.formats.nifti import read_nifti_array

    src = openkbp_dir / "validation-pats" / "pt_201"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "pt_201").symlink_to(src.resolve())
    assert main(["predict", "--checkpoint", "prior-dose", "--input", str(tmp_path / "in"), "--out",
                 str(tmp_path / "p"), "--format", "nifti"]) == 0
    got = read_nifti_array(tmp_path / "p" / "pt_201.nii.gz")[0]
    p = load_patient(src)
    want = compute_priors(p, PriorsSpec(("prior_dose",)))["prior_dose"]
    want[~p.dose_mask()] = 0.0
    assert want.max() > 60 and (want[~p.dose_mask()] == 0).all()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_prior_kind_is_not_trained_nor_exported(tmp_path):
    from mddose.kinds import get_kind
    from mddose.predict.shipped import resolve_checkpoint
    from mddose.train.checkpoint import export_for_prediction

    with pytest.raises(MddoseError, match="computed, not trained"):
        get_kind("prior").build_data(None)
    with pytest.raises(MddoseError, match="no weights to export"):
        export_for_prediction(resolve_checkpoint("prior-dose"), tmp_path / "e")


def test_models_json_lists_shipped_checkpoints_with_validation(capsys):
    assert main(["models", "--json"]) == 0
    shipped = {s["name"]: s for s in json.loads(capsys.readouterr().out)["shipped"]}
    assert {"openkbp-small", "prior-dose"} <= set(shipped)
    for s in shipped.values():
        v = s["validation"]
        assert set(v) >= {"dose_score", "dvh_score", "patients"} and v["patients"] >= 1
        assert 0 < v["dose_score"] < 20 and 0 < v["dvh_score"] < 20
    assert shipped["prior-dose"]["kind"] == "prior"
