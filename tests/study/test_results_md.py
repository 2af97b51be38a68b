"""RESULTS.md quotes the committed `paper-cpu` study: every method of Tables 1 and 3, with the means and sds
of its per-patient scores as recomputed here from `results/paper-cpu/study.json` (no hand-typed numbers), and the
re-run of Table 3's encoder rows (issue 21) from `results/paper-cpu-encoders/study.json`."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUDY = json.loads((ROOT / "results" / "paper-cpu" / "study.json").read_text())
RESULTS = (ROOT / "RESULTS.md").read_text()
TABLE1 = ["C3D", "HD-UNet", "DiffDP", "SP-DiffDose", "MD-Dose"]
TABLE3 = ["MD-Dose", "MD-Dose none-SE", "MD-Dose Conv-SE", "MD-Dose Trans-SE"]


RERUN = json.loads((ROOT / "results" / "paper-cpu-encoders" / "study.json").read_text())
RERUN_HEADING = "### Table 3 re-run on the issue-21 Mamba code"


def _row(name: str, text: str = RESULTS) -> str:
    """The first score row (Table 1 or 3) of method ``name`` in ``text`` (the reference row carries a suffix)."""
    label = re.compile(re.escape(name) + r"( = Mamba-SE)?( \(reference\))?")
    for line in text.splitlines():
        first = line.strip().strip("|").split("|")[0].strip()
        if line.startswith("|") and "±" in line and label.fullmatch(first):
            return line
    raise AssertionError(f"no row for {name} in RESULTS.md")


def test_the_study_is_complete():
    assert set(TABLE1 + TABLE3) == set(STUDY["methods"])
    assert all(m["status"] == "done" for m in STUDY["methods"].values())
    assert STUDY["budget"] == {"minutes": 12}


@pytest.mark.parametrize("name", sorted(set(TABLE1 + TABLE3)))
@pytest.mark.parametrize("column", ["dose_error", "dvh_error"])
def test_results_md_quotes_the_study(name, column):
    per_patient = STUDY["methods"][name]["stages"]["evaluate"]["values"][column]
    assert len(per_patient) == 8
    vals = list(per_patient.values())
    quoted = f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"
    assert quoted in _row(name)


def test_results_md_has_the_command_and_date():
    assert "mddose study --config paper-cpu --out runs/paper-cpu" in RESULTS
    assert STUDY["written"][:10] in RESULTS


def _rerun_section() -> str:
    start = RESULTS.index(RERUN_HEADING)
    return RESULTS[start:RESULTS.index("\n## ", start)]


def test_the_rerun_is_complete_and_alike():
    """The re-run trained exactly Table 3's rows, with the first run's budget and study config."""
    assert {n for n, m in RERUN["methods"].items() if m["status"] == "done"} == set(TABLE3)
    assert RERUN["budget"] == STUDY["budget"] and RERUN["seed"] == STUDY["seed"]
    assert RERUN["test_patients"] == STUDY["test_patients"]
    for split in ("train", "test"):   # the re-run recorded absolute paths, the first run relative ones
        assert Path(RERUN["config"]["data"][split]).parts[-2:] == Path(STUDY["config"]["data"][split]).parts[-2:]
    first = {m["name"]: m for m in STUDY["config"]["methods"]}
    for m in RERUN["config"]["methods"]:
        if m["name"] in TABLE3:   # same model, preset, overrides and training settings ("checkpoint" is newer)
            assert {k: v for k, v in m.items() if k != "checkpoint"} == first[m["name"]]


@pytest.mark.parametrize("name", TABLE3)
@pytest.mark.parametrize("column", ["dose_error", "dvh_error"])
def test_results_md_quotes_the_rerun(name, column):
    vals = list(RERUN["methods"][name]["stages"]["evaluate"]["values"][column].values())
    assert len(vals) == 8
    assert f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}" in _row(name, _rerun_section())


@pytest.mark.parametrize("name", TABLE3)
def test_results_md_quotes_the_step_counts(name):
    """The steps-then-and-now table quotes both runs' training step counts."""
    then, now = (s["methods"][name]["stages"]["train"]["steps"] for s in (STUDY, RERUN))
    line = next(ln for ln in _rerun_section().splitlines() if ln.startswith(f"| {name} ") and "→" in ln)
    assert f"{then} → {now}" in line
