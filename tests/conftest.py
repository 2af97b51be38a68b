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


def shared_required(environ=os.environ) -> bool:
    """Whether the shared data must be present: ``MDDOSE_REQUIRE_SHARED=1`` (``.ci/run`` sets it) or running
    under CI (``$CI`` set to anything but ``""``/``0``/``false``, as CI services do); then a missing directory
    fails the tests that need it instead of skipping them."""
    def on(name):
        return environ.get(name, "").strip().lower() not in ("", "0", "false", "no")

    return on("MDDOSE_REQUIRE_SHARED") or on("CI")


def require_shared(path: Path, what: str, environ=os.environ) -> Path:
    """``path`` if it is a directory; otherwise fail (:func:`shared_required`) or skip the test."""
    if not path.is_dir():
        msg = f"{what} not found at {path}"
        if shared_required(environ):
            pytest.fail(f"{msg} (required: MDDOSE_REQUIRE_SHARED=1 or CI is set)", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def openkbp_dir() -> Path:
    """``../shared/openkbp`` (train-pats/, validation-pats/); skips if the shared data is absent (fails
    under CI or with ``MDDOSE_REQUIRE_SHARED=1``)."""
    return require_shared(OPENKBP, "shared OpenKBP data")


@pytest.fixture(scope="session")
def openkbp_reference_dir() -> Path:
    """``../shared/openkbp-reference``; skips if absent (fails under CI or with ``MDDOSE_REQUIRE_SHARED=1``)."""
    return require_shared(OPENKBP_REFERENCE, "shared OpenKBP reference")


@pytest.fixture
def one_thread():
    """torch on one thread for the test (tiny models are fastest single-threaded; the machine is shared)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's on-disk caches out of the user's home."""
    monkeypatch.setenv("MDDOSE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mddose-cache"))
