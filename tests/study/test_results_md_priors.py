"""RESULTS.md's `priors-cpu` section quotes the committed study: every finished method's row carries the mean ± sd
of its per-patient scores as recomputed here from `results/priors-cpu/study.json` (no hand-typed numbers)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUDY_FILE = ROOT / "results" / "priors-cpu" / "study.json"
STUDY = json.loads(STUDY_FILE.read_text()) if STUDY_FILE.is_file() else {"methods": {}}
TEXT = (ROOT / "RESULTS.md").read_text()
HEADING = "## Does the plan's geometry help? — `priors-cpu`"
DONE = sorted(n for n, m in STUDY["methods"].items() if m.get("status") == "done")


def _section() -> str:
    start = TEXT.index(HEADING)
    end = TEXT.find("\n## ", start + len(HEADING))
    return TEXT[start:end if end > 0 else None]


def _row(name: str) -> str:
    label = re.compile(re.escape(name) + r"( \(reference\))?")
    for line in _section().splitlines():
        first = line.strip().strip("|").split("|")[0].strip()
        if line.startswith("|") and "±" in line and label.fullmatch(first):
            return line
    raise AssertionError(f"no row for {name} in RESULTS.md's priors-cpu section")


def test_the_study_is_there_with_its_command():
    assert STUDY_FILE.is_file() and len(DONE) >= 9
    budgets = dict(STUDY["budget"])      # every trained method had 12 minutes; the prior dose is computed
    assert budgets.pop("Prior dose") == {"steps": 0} and all(b == {"minutes": 12} for b in budgets.values())
    assert "mddose study --config priors-cpu --out runs/priors-cpu" in _section()


@pytest.mark.parametrize("name", DONE)
@pytest.mark.parametrize("column", ["dose_error", "dvh_error"])
def test_results_md_quotes_the_study(name, column):
    vals = list(STUDY["methods"][name]["stages"]["evaluate"]["values"][column].values())
    assert len(vals) == 8
    assert f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}" in _row(name)
