"""OpenKBP scores: every number of the official evaluator's expected_scores.json, plus hand-made cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mddose.evaluate import openkbp
from mddose.evaluate.run import evaluate_predictions

VARIANTS = ("smoothed", "noisy", "shifted")
PATIENTS = ("pt_201", "pt_202", "pt_203")


def _close(a, b, rel=1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def expected(openkbp_reference_dir):
    return json.loads((openkbp_reference_dir / "expected_scores.json").read_text())


@pytest.fixture(scope="module")
def results(openkbp_dir, openkbp_reference_dir):
    """One evaluation per variant, through the real readers (reference dir holds 8 patients)."""
    return {v: evaluate_predictions(openkbp_dir / "validation-pats", openkbp_reference_dir / f"predictions-{v}")
            for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_scores_match_official(results, expected, variant):
    res, exp = results[variant], expected[variant]
    assert res.patients == list(PATIENTS)
    assert res.errors == []
    assert _close(res.dose_score, exp["dose_score"])
    assert _close(res.dvh_score, exp["dvh_score"])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pid", PATIENTS)
def test_patient_numbers_match_official(results, expected, variant, pid):
    summary, exp = results[variant].summary(), expected[variant]
    assert _close(summary["dose_error_per_patient"][pid], exp["dose_error_per_patient"][pid])
    for which in ("dvh_metrics_prediction", "dvh_metrics_reference"):
        mine, theirs = summary[which][pid], exp[which][pid]
        assert list(mine) == list(theirs)  # same metrics, same order
        for key, value in theirs.items():
            if value is None:
                assert mine[key] is None, key
            else:
                assert _close(mine[key], value), (which, key, mine[key], value)


def test_missing_patients_listed(results, openkbp_dir):
    ids = sorted(p.name for p in (openkbp_dir / "validation-pats").iterdir() if p.is_dir())
    assert sorted(results["noisy"].missing) == sorted(set(ids) - set(PATIENTS))


def test_float32_arrays_agree_closely(results, openkbp_dir, openkbp_reference_dir):
    """The contract's float32 doses (no float64 re-read) give the same scores to ~1e-7."""
    from mddose.data.io import load_patient
    from mddose.data.formats.openkbp import read_dose_csv

    p = load_patient(openkbp_dir / "validation-pats" / "pt_201")
    pred = read_dose_csv(openkbp_reference_dir / "predictions-noisy" / "pt_201.csv", p.shape)
    err, ref, prd = openkbp.score_patient(p.dose, pred, p.masks, p.possible_dose_mask, p.spacing, p.prescriptions)
    rec = results["noisy"].records[0]
    assert _close(err, rec.dose_error, rel=1e-6)
    for k, v in rec.dvh_prediction.items():
        assert (v is None and prd[k] is None) or _close(prd[k], v, rel=1e-6)


def test_reference_without_possible_dose_mask_is_refused(tmp_path, openkbp_dir, openkbp_reference_dir):
    """Issue 11: without possible_dose_mask.csv the patient was scored over the whole grid (a far too small
    dose error); now it is refused by name, and the patient with its mask is scored as before."""
    ref = tmp_path / "ref"
    src = openkbp_dir / "validation-pats" / "pt_201"
    (ref / "pt_201").mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "possible_dose_mask.csv":
            (ref / "pt_201" / f.name).symlink_to(f)
    (ref / "pt_202").symlink_to(openkbp_dir / "validation-pats" / "pt_202", target_is_directory=True)
    res = evaluate_predictions(ref, openkbp_reference_dir / "predictions-noisy")
    assert res.patients == ["pt_202"]
    (item, msg), = res.errors
    assert item == "pt_201" and "possible-dose mask" in msg and "not scored" in msg and str(ref / "pt_201") in msg
    assert "patients without a possible-dose mask are refused" in res.summary()["dose_error_definition"]


def test_score_patient_requires_a_possible_dose_mask(rng):
    ref = rng.uniform(0, 70, (4, 5, 6))
    with pytest.raises(ValueError, match="possible-dose mask"):
        openkbp.score_patient(ref, ref * 0.9, {}, None, (2.0, 2.0, 2.0), {})


# ------------------------------------------------------------------------ hand-made cases
def test_dose_error_sums_whole_grid_divides_by_mask(rng):
    ref = rng.uniform(0, 70, (6, 5, 4))
    pred = rng.uniform(0, 70, (6, 5, 4))
    mask = np.zeros(ref.shape, bool)
    mask[1:4, 1:3, :2] = True
    expected = sum(abs(a - b) for a, b in zip(ref.ravel(), pred.ravel())) / 12
    assert math.isclose(openkbp.dose_error(ref, pred, mask), expected, rel_tol=1e-12)


@pytest.mark.parametrize("volume, voxels", [(27.0, 4), (1000.0, 1), (40.0, 2), (100 / 3.5, 4), (20.0, 5)])
def test_voxels_in_tenth_cc(volume, voxels):
    # 100/40 = 2.5 rounds half to even (2); 100/(100/3.5) = 3.5 → 4
    assert openkbp.voxels_in_tenth_cc(volume) == voxels


def test_d_tenth_cc_by_hand():
    # 10 voxels of 50 mm³: 0.1 cc = 2 voxels → percentile 80 of 0..9 = 7.2 (linear interpolation)
    assert math.isclose(openkbp.d_tenth_cc(np.arange(10.0), 50.0), 7.2)
    # an ROI smaller than 0.1 cc gives its minimum (percentile clipped at 0)
    assert openkbp.d_tenth_cc(np.array([5.0, 9.0]), 10.0) == 5.0


def test_dvh_metrics_by_hand():
    dose = np.arange(101, dtype=np.float64).reshape(1, 1, 101)
    target = np.ones_like(dose, bool)
    oar = np.zeros_like(dose, bool)
    oar[..., 90:] = True  # doses 90..100, 11 voxels
    m = openkbp.dvh_metrics(dose, {"PTV70": target, "Cord": oar}, 20.0, targets=["PTV70", "PTV56"],
                            oars=["Cord"])
    assert m["D_99|PTV70"] == 1.0 and m["D_95|PTV70"] == 5.0 and m["D_1|PTV70"] == 99.0
    assert m["mean|Cord"] == 95.0
    # 0.1 cc = 5 voxels of 20 mm³ → percentile 100 - 5/11*100 of 90..100 = 90 + 10*(6/11)
    assert math.isclose(m["D_0.1_cc|Cord"], 90 + 10 * (1 - 5 / 11))
    assert m["D_99|PTV56"] is None


def test_dvh_score_pools_metrics_not_patients():
    s = openkbp.OpenKBPScores()
    s.add("a", 1.0, {"x": 1.0, "y": 2.0, "z": None}, {"x": 2.0, "y": 2.0, "z": None})  # errors 1, 0
    s.add("b", 3.0, {"x": 1.0}, {"x": 5.0})  # error 4
    assert s.dose_score == 2.0
    assert s.dvh_score == pytest.approx(5 / 3)  # not (0.5 + 4) / 2
    assert s.patient_dvh_error("a") == 0.5
