"""Shared fixtures: paths to ``../shared`` (real OpenKBP data), temporary dirs, seeds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MDDOSE_SHARED", REPO.parent / "shared"))
OPENKBP = SHARED / "openkbp"
OPENKBP_REFERENCE = SHARED / "openkbp-reference"


@pytest.fixture(scope="session")
def openkbp_dir() -> Path:
    """``../shared/openkbp`` (train-pats/, validation-pats/); skips if the shared data is absent."""
    if not OPENKBP.is_dir():
        pytest.skip(f"shared OpenKBP data not found at {OPENKBP}")
    return OPENKBP


@pytest.fixture(scope="session")
def openkbp_reference_dir() -> Path:
    """``../shared/openkbp-reference``; skips if absent."""
    if not OPENKBP_REFERENCE.is_dir():
        pytest.skip(f"shared OpenKBP reference not found at {OPENKBP_REFERENCE}")
    return OPENKBP_REFERENCE


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's on-disk caches out of the user's home."""
    monkeypatch.setenv("MDDOSE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mddose-cache"))
