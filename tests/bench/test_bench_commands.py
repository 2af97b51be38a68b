"""The benchmark commands run and report what BENCHMARKS.md quotes (values are not asserted: speed is
checked by the benchmarks themselves, never by timed tests)."""

from __future__ import annotations

import json

import pytest

from mddose.cli.main import main


@pytest.fixture
def two_patients_dir(openkbp_dir, tmp_path):
    """A directory of symlinks to two shared patients (keeps the commands quick)."""
    root = tmp_path / "pats"
    root.mkdir()
    for pid in ("pt_201", "pt_202"):
        (root / pid).symlink_to(openkbp_dir / "validation-pats" / pid)
    return root


@pytest.mark.parametrize("name, keys", [
    ("io", {"patients", "csv_median_s", "cache_median_s", "csv_ok", "cache_ok"}),
    ("evaluate", {"patients", "load_plus_scores_s", "dose_score", "dvh_score", "gamma_s", "gamma_pass_rate"}),
])
def test_bench_command_json(name, keys, two_patients_dir, capsys):
    assert main(["bench", name, "--data", str(two_patients_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert keys <= set(out)
    assert out["patients"] == 2 or len(out["patients"]) == 2


def test_bench_model_rejects_missing_checkpoint(tmp_path, capsys):
    rc = main(["bench", "model", "--sections", "steps", "--checkpoint", str(tmp_path / "nope")])
    assert rc == 2 and "--checkpoint" in capsys.readouterr().err


def test_bench_patient_counts_the_sampled_slices():
    """The whole-patient row says how many slices were sampled (so s / slice compares patients)."""
    import dataclasses

    from mddose.bench.model import _patient_bundle, _predicted_slices
    from mddose.data.phantom import make_phantom

    patient = make_phantom(0, 32)
    mask = patient.possible_dose_mask.copy()
    mask[:5] = False                                 # five slices without possible dose are not sampled
    patient = dataclasses.replace(patient, possible_dose_mask=mask)
    bundle, _ = _patient_bundle(None)
    assert _predicted_slices(bundle, patient) == int(mask.any(axis=(1, 2)).sum()) <= patient.shape[0] - 5
