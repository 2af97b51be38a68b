"""``mddose bench dataset`` — build the slice dataset of the shared OpenKBP patients.

Three stages, each in a fresh Python subprocess (so that ``ru_maxrss`` is that stage's peak resident
memory, numpy and torch included) sharing one temporary cache directory:

* ``cold``        — empty cache: CSV parsing + patient cache + slicing/resizing + slice cache;
* ``slices-cold`` — patient cache warm, slice cache emptied: loading .npy + slicing/resizing;
* ``warm``        — both caches warm: only memory-mapped slice arrays are copied.

Targets: cold ≤ 30 s, peak memory ≤ 2 GiB (36 patients, size 128, float16).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mddose.utils.config import int_at_least

TARGET_COLD_S = 30.0
TARGET_PEAK_GIB = 2.0

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from mddose.data.inputs.slice_dataset import SliceDataset
from mddose.data.inputs.slices import SliceConfig
t_import = time.perf_counter() - t0
dirs, size, dtype, rois = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
cfg = SliceConfig.for_phantoms(size=size) if rois == "phantoms" else SliceConfig(size=size)
t0 = time.perf_counter()
ds = SliceDataset(dirs, cfg, dtype=dtype)
t = time.perf_counter() - t0
item = ds[len(ds) // 2]
print(json.dumps({"seconds": t, "import_seconds": t_import, "slices": len(ds), "patients": len(ds.patient_ids),
                  "bad": len(ds.bad), "dataset_bytes": int(ds.cond.nbytes + ds.dose.nbytes),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def add_arguments(parser) -> None:
    parser.add_argument("--data", default=None,
                        help="OpenKBP folder (train-pats/ and validation-pats/) or a folder of patient "
                             "folders (default: $MDDOSE_SHARED/openkbp or ../shared/openkbp)")
    parser.add_argument("--size", type=int_at_least(8), default=128, help="slice size (default 128)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--rois", choices=("openkbp", "phantoms"), default="openkbp",
                        help="the ROI channels: OpenKBP's (default) or those of mddose's phantoms")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _patient_dirs(data: Path) -> list[Path]:
    from mddose.data.io import patient_dirs
    from mddose.errors import MddoseError

    if not data.is_dir():
        raise MddoseError("benchmark data folder not found (use --data)", data)
    splits = [data / s for s in ("train-pats", "validation-pats") if (data / s).is_dir()]
    if splits:
        return [d for s in splits for d in patient_dirs(s)]
    return patient_dirs(data)


def _stage(dirs: list[Path], size: int, dtype: str, cache_dir: Path, rois: str = "openkbp") -> dict:
    env = dict(os.environ, MDDOSE_CACHE_DIR=str(cache_dir))
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([str(d) for d in dirs]), str(size), dtype, rois],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        if last.startswith("mddose.errors.MddoseError: "):       # bad data: the user's error, one line
            from mddose.errors import MddoseError
            raise MddoseError(last.split(": ", 1)[1])
        raise RuntimeError(f"benchmark subprocess failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> int:
    from mddose.bench import shared_openkbp

    data = Path(args.data) if args.data else shared_openkbp()
    dirs = _patient_dirs(data)
    if not dirs:
        from mddose.errors import MddoseError
        raise MddoseError("--data: no patient folders found", data)
    tmp = Path(tempfile.mkdtemp(prefix="mddose-bench-dataset-"))
    try:
        results = {"cold": _stage(dirs, args.size, args.dtype, tmp, args.rois)}
        shutil.rmtree(tmp / "slices", ignore_errors=True)
        results["slices-cold"] = _stage(dirs, args.size, args.dtype, tmp, args.rois)
        results["warm"] = _stage(dirs, args.size, args.dtype, tmp, args.rois)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gib = 1024 ** 3
    summary = {"data": str(data), "patients": len(dirs), "size": args.size, "dtype": args.dtype,
               "stages": results, "targets": {"cold_seconds": TARGET_COLD_S, "peak_gib": TARGET_PEAK_GIB},
               "cold_ok": results["cold"]["seconds"] <= TARGET_COLD_S,
               "memory_ok": max(r["peak_rss_bytes"] for r in results.values()) <= TARGET_PEAK_GIB * gib}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"slice dataset: {len(dirs)} patients from {data}, size {args.size}, {args.dtype}")
    print(f"{'stage':<12} {'seconds':>8} {'slices':>7} {'dataset MiB':>12} {'peak RSS MiB':>13}")
    for name, r in results.items():
        print(f"{name:<12} {r['seconds']:>8.2f} {r['slices']:>7d} {r['dataset_bytes'] / 2**20:>12.0f} "
              f"{r['peak_rss_bytes'] / 2**20:>13.0f}")
    print(f"targets: cold ≤ {TARGET_COLD_S:.0f} s ({'ok' if summary['cold_ok'] else 'MISSED'}), "
          f"peak ≤ {TARGET_PEAK_GIB:.0f} GiB ({'ok' if summary['memory_ok'] else 'MISSED'})")
    return 0
