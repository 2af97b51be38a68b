"""OpenKBP scores of full-precision predictions agree with an independent float64 evaluator to 1e-9.

The shared reference predictions (``openkbp-reference``) are checked against the official numbers in
test_openkbp.py. Here the predictions carry every float64 digit (``repr``): reference dose × 0.95 + 0.5.
Scored against the float32 contract dose instead of the float64 ``dose.csv``, such a prediction's DVH score
is ~5e-8 relative off (float32's half-ulp is 6e-8), which 1e-9 catches: that was issue 19, item 5, where a
patient loaded through the cache from another working directory carried the first load's relative path, the
float64 re-read of its ``dose.csv`` was not found and the float32 dose was used silently.

The independent evaluator below follows the official one (``DoseEvaluator`` of ababier/open-kbp): CSVs
parsed with ``float`` into dense float64 arrays in the files' own voxel order, dose error = Σ|ref − pred|
over the grid ÷ possible-dose-mask voxels, DVH metrics per ROI (``D_0.1_cc`` from
``n = max(1, round(100 / Π voxel_dimensions))``, ``mean``; ``D_99``, ``D_95``, ``D_1`` as percentiles 1, 5,
99), DVH score = mean |difference| over every present (patient, ROI, metric).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from mddose.data.patient import OPENKBP_OARS, OPENKBP_TARGETS
from mddose.errors import MddoseError
from mddose.evaluate.records import evaluate_arrays
from mddose.evaluate.run import evaluate_predictions

PATIENTS = ("pt_201", "pt_203")  # two patients keep the test fast; pt_203 lacks some ROIs
N_VOXELS = 128 ** 3
#: Relative agreement required (the official evaluator is matched to ~1e-15; float32 is ~5e-8 off).
REL = 1e-9


def _read(path: Path) -> dict[int, float]:
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        next(rows)
        return {int(r[0]): (float(r[1]) if len(r) > 1 and r[1] else 1.0) for r in rows if r}


def _dense(values: dict[int, float]) -> np.ndarray:
    out = np.zeros(N_VOXELS)
    out[list(values)] = list(values.values())
    return out


def _official(ref_dir: Path, pred_dir: Path, pids) -> tuple[float, float, dict]:
    """(dose score, DVH score, {pid: {"METRIC|ROI": (reference, prediction)}}) in float64."""
    errors, diffs, metrics = [], [], {}
    for pid in pids:
        ref, pred = _dense(_read(ref_dir / pid / "dose.csv")), _dense(_read(pred_dir / f"{pid}.csv"))
        pdm = _dense(_read(ref_dir / pid / "possible_dose_mask.csv")) > 0
        errors.append(np.sum(np.abs(ref - pred)) / np.sum(pdm))
        voxel = np.prod([float(v) for v in (ref_dir / pid / "voxel_dimensions.csv").read_text().split()])
        metrics[pid] = {}
        for roi in (*OPENKBP_OARS, *OPENKBP_TARGETS):
            if not (ref_dir / pid / f"{roi}.csv").is_file():
                continue
            mask = _dense(_read(ref_dir / pid / f"{roi}.csv")) > 0
            for name, fn in _metric_functions(roi, voxel).items():
                pair = (fn(ref[mask]), fn(pred[mask]))
                metrics[pid][f"{name}|{roi}"] = pair
                diffs.append(abs(pair[0] - pair[1]))
    return float(np.mean(errors)), float(np.mean(diffs)), metrics


def _metric_functions(roi: str, voxel: float) -> dict:
    if roi in OPENKBP_TARGETS:
        return {"D_99": lambda d: np.percentile(d, 1), "D_95": lambda d: np.percentile(d, 5),
                "D_1": lambda d: np.percentile(d, 99)}
    n = max(1, np.round(100 / voxel))
    return {"D_0.1_cc": lambda d: np.percentile(d, 100 - n / len(d) * 100), "mean": lambda d: d.mean()}


@pytest.fixture(scope="module")
def full_precision(openkbp_dir, tmp_path_factory):
    """(reference dir, prediction dir, official numbers): reference × 0.95 + 0.5 written with repr digits."""
    ref_dir = openkbp_dir / "validation-pats"
    pred_dir = tmp_path_factory.mktemp("full-precision")
    for pid in PATIENTS:
        dose = _read(ref_dir / pid / "dose.csv")
        with open(pred_dir / f"{pid}.csv", "w") as fh:
            fh.write(",data\n" + "".join(f"{i},{v * 0.95 + 0.5!r}\n" for i, v in dose.items()))
    return ref_dir, pred_dir, _official(ref_dir, pred_dir, PATIENTS)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * abs(b)


def _assert_official(res, official) -> None:
    dose_score, dvh_score, metrics = official
    assert res.errors == [] and res.patients == list(PATIENTS)
    assert _close(res.dvh_score, dvh_score), (res.dvh_score, dvh_score)
    assert _close(res.dose_score, dose_score), (res.dose_score, dose_score)
    for rec in res.records:
        for key, (ref, pred) in metrics[rec.id].items():
            assert _close(rec.dvh_reference[key], ref) and _close(rec.dvh_prediction[key], pred), key


def test_predictions_written_with_every_digit(full_precision):
    _, pred_dir, _ = full_precision
    digits = [len(line.split(",")[1].strip().replace(".", "").lstrip("0"))
              for line in (pred_dir / "pt_201.csv").read_text().splitlines()[1:200]]
    assert max(digits) >= 16  # float64 repr digits, not the reference's 3 decimals


def test_full_precision_scores_match_float64_evaluator(full_precision):
    ref_dir, pred_dir, official = full_precision
    _assert_official(evaluate_predictions(ref_dir, pred_dir), official)


def test_exact_after_a_cache_hit_from_another_working_directory(full_precision, tmp_path, monkeypatch):
    """The patients are first cached through a path relative to another directory (as ``mddose train`` run
    elsewhere would); scoring from here must still re-read the float64 doses (was ~5e-8 off)."""
    ref_dir, pred_dir, official = full_precision
    monkeypatch.setenv("MDDOSE_CACHE_DIR", str(tmp_path / "cache"))
    from mddose.data.io import load_patients

    monkeypatch.chdir(ref_dir.parent)
    first, _ = load_patients(ref_dir.name)
    assert first[0].meta["source"] == f"{ref_dir.name}/{first[0].id}"  # relative to ref_dir.parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _assert_official(evaluate_predictions(ref_dir, pred_dir), official)
    again, _ = load_patients(ref_dir)  # a cache hit: the source is the path given now
    assert [p.meta["source"] for p in again] == [str(ref_dir / p.id) for p in again]


def test_float32_reference_is_measurably_off(full_precision, openkbp_dir):
    """What 1e-9 guards against: the same predictions scored against the float32 contract doses."""
    from mddose.data.io import load_patient
    from mddose.evaluate.predictions import read_volume
    from mddose.evaluate.records import evaluate_patient

    ref_dir, pred_dir, (_, dvh_score, _) = full_precision
    recs = []
    for pid in PATIENTS:
        p = load_patient(ref_dir / pid)
        recs.append(evaluate_patient(p, read_volume(pred_dir / f"{pid}.csv", p), reference_dose=p.dose))
    off = np.mean([e for r in recs for e in r.dvh_errors.values()])
    assert 1e-8 < abs(off - dvh_score) / dvh_score < 1e-6


def test_in_memory_float64_predictions_are_exact(full_precision):
    """evaluate_arrays (``mddose report``'s scores) re-reads the float64 reference dose as well."""
    from mddose.data.io import load_patient
    from mddose.evaluate.predictions import read_volume

    ref_dir, pred_dir, official = full_precision
    patients = [load_patient(ref_dir / pid) for pid in PATIENTS]
    preds = {p.id: read_volume(pred_dir / f"{p.id}.csv", p) for p in patients}
    assert all(a.dtype == np.float64 for a in preds.values())
    _assert_official(evaluate_arrays(patients, preds), official)


@pytest.mark.parametrize("change", ["removed", "other dose"])
def test_reference_dose_never_falls_back_silently(full_precision, tmp_path, change):
    """A patient whose dose.csv is gone, or is no longer the file it was read from, is an error by name,
    not a silently float32 (or wrong) reference."""
    from mddose.data.io import load_patient
    from mddose.evaluate.predictions import read_volume, reference_dose

    ref_dir, pred_dir, _ = full_precision
    copy = tmp_path / "pt_201"
    copy.mkdir()
    for f in (ref_dir / "pt_201").iterdir():
        (copy / f.name).symlink_to(f)
    p = load_patient(copy, cache=False)
    pred = read_volume(pred_dir / "pt_201.csv", p)
    (copy / "dose.csv").unlink()
    if change == "other dose":
        (copy / "dose.csv").symlink_to(ref_dir / "pt_202" / "dose.csv")
    with pytest.raises(MddoseError, match="cannot re-read|not the one the patient was read from") as exc:
        reference_dose(p, pred)
    assert str(copy / "dose.csv") in str(exc.value)
    assert math.isfinite(float(p.dose.max()))  # the float32 dose itself is still there
