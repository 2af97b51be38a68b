"""Benchmarks, each a module with ``add_arguments(parser)`` and ``run(args) -> int``; run by ``mddose bench NAME``.

Results are printed as a table (and JSON with ``--json``); BENCHMARKS.md records the latest numbers.
"""
