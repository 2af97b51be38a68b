"""``mddose bench NAME`` — run one benchmark (numbers recorded in BENCHMARKS.md)."""

from __future__ import annotations

import importlib

#: benchmark name → (module under mddose.bench, one-line help)
BENCHMARKS = {
    "scan": ("scan", "selective scan: reference vs fast path vs mambapy (time, peak memory)"),
    "io": ("io", "reading OpenKBP patients from CSV and from the cache"),
    "dataset": ("dataset", "building the slice dataset from the shared OpenKBP patients"),
    "model": ("model", "denoiser parameters, s/iteration, training throughput, whole-patient prediction"),
    "evaluate": ("evaluate", "dose/DVH scores of the shared patients and 3D gamma"),
    "gpu": ("gpu", "GPU check: CUDA tests, 20 AMP training steps per 2D model, Table 2 and scans on the GPU"),
}


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark")
    bsub = p.add_subparsers(dest="bench", metavar="NAME", parser_class=type(p))
    for name, (module, help_) in BENCHMARKS.items():
        bp = bsub.add_parser(name, help=help_)
        mod = importlib.import_module(f"mddose.bench.{module}")  # mddose's own module: no guard, a failure is a bug
        mod.add_arguments(bp)
        bp.set_defaults(func=mod.run)
