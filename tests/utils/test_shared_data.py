"""The ``../shared`` fixtures skip on a developer's machine but fail under CI (issue 11, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_shared, shared_required

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("environ, required", [
    ({}, False),
    ({"MDDOSE_REQUIRE_SHARED": "1"}, True),
    ({"MDDOSE_REQUIRE_SHARED": "0"}, False),
    ({"CI": "true"}, True),
    ({"CI": "1"}, True),
    ({"CI": "false"}, False),
    ({"CI": ""}, False),
])
def test_when_shared_data_is_required(environ, required):
    assert shared_required(environ) is required


@pytest.mark.parametrize("environ, outcome", [
    ({}, pytest.skip.Exception),
    ({"MDDOSE_REQUIRE_SHARED": "1"}, pytest.fail.Exception),
    ({"CI": "true"}, pytest.fail.Exception),
])
def test_missing_shared_data_skips_or_fails(tmp_path, environ, outcome):
    with pytest.raises(outcome, match="not found"):
        require_shared(tmp_path / "missing", "shared OpenKBP data", environ)
    assert require_shared(tmp_path, "shared OpenKBP data", environ) == tmp_path


def test_ci_requires_shared_data_and_runs_exactly_the_readme_test_command():
    script = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("python3 -m venv") and "pytest" in line)
    lines = script.splitlines()
    assert lines[-1] == command                          # the README's test command, verbatim, last
    assert "export MDDOSE_REQUIRE_SHARED=1" in lines[:-1]
