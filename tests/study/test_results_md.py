"""RESULTS.md quotes the committed `paper-cpu` study: every method of Tables 1 and 3, with the means and sds
of its per-patient scores as recomputed here from `results/paper-cpu/study.json` (no hand-typed numbers)."""

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


def _row(name: str) -> str:
    """The first score row (Table 1 or 3) of method ``name`` in RESULTS.md (the reference row carries a suffix)."""
    label = re.compile(re.escape(name) + r"( = Mamba-SE)?( \(reference\))?")
    for line in RESULTS.splitlines():
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
