"""Benchmarks, each a module with ``add_arguments(parser)`` and ``run(args) -> int``; run by ``mddose bench NAME``.

Results are printed as a table (and JSON with ``--json``); BENCHMARKS.md records the latest numbers.
"""

from pathlib import Path as _Path


def shared_openkbp() -> _Path:
    """Default OpenKBP data for benchmarks: ``$MDDOSE_SHARED/openkbp``, else ``../shared/openkbp`` beside
    the repository checkout, else ``../shared/openkbp`` relative to the working directory."""
    import os

    env = os.environ.get("MDDOSE_SHARED")
    if env:
        return _Path(env) / "openkbp"
    beside_repo = _Path(__file__).resolve().parents[3].parent / "shared" / "openkbp"
    return beside_repo if beside_repo.is_dir() else _Path.cwd().parent / "shared" / "openkbp"
