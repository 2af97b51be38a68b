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
