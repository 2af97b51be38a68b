"""``mddose bench io`` — reading OpenKBP patients from CSV and from the cache.

Measures (1) one patient parsed from its CSV files (median over patients, cache off), (2) the same
patient loaded from the on-disk cache (median), (3) all patients from CSV and (4) all from the cache,
against the targets ≤ 0.5 s per patient from CSV and ≤ 30 ms per patient from the cache. The cache used is
a fresh temporary directory, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mddose.utils.config import int_at_least

CSV_TARGET_S = 0.5
CACHE_TARGET_S = 0.030


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None,
                        help="OpenKBP data: a patient dir or dir of patient dirs "
                             "(default: $MDDOSE_SHARED/openkbp or ../shared/openkbp)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--repeats", type=int_at_least(1), default=3, help="cache loads per patient (median taken)")


def _default_data() -> Path:
    from mddose.bench import shared_openkbp

    return shared_openkbp()


def run(args: argparse.Namespace) -> int:
    import statistics
    import tempfile
    import time

    from mddose.data.cache import cached_load
    from mddose.data.io import detect_format, patient_dirs
    from mddose.data.formats.openkbp import read_openkbp_patient
    from mddose.errors import MddoseError

    data = Path(args.data) if args.data else _default_data()
    dirs = [d for d in patient_dirs(data) if (d / "ct.csv").is_file()]
    if not dirs:
        raise MddoseError("no OpenKBP patients found", data)
    detect_format(dirs[0])
    read_openkbp_patient(dirs[0])  # warm up imports (pandas)
    old = os.environ.get("MDDOSE_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="mddose-bench-io-") as tmp:
        os.environ["MDDOSE_CACHE_DIR"] = tmp
        try:
            csv_times, cache_times = [], []
            for d in dirs:  # CSV parse (also fills the cache, timed separately below)
                t0 = time.perf_counter()
                read_openkbp_patient(d)
                csv_times.append(time.perf_counter() - t0)
                cached_load(d, "openkbp", read_openkbp_patient)
            for d in dirs:
                per = []
                for _ in range(max(1, args.repeats)):
                    t0 = time.perf_counter()
                    p = cached_load(d, "openkbp", _no_parse)
                    # CT and dose are read by Patient.validate and masks unpacked; page in the rest too
                    if p.possible_dose_mask is not None:
                        int(p.possible_dose_mask.sum())
                    per.append(time.perf_counter() - t0)
                cache_times.append(statistics.median(per))
        finally:
            if old is None:
                os.environ.pop("MDDOSE_CACHE_DIR", None)
            else:
                os.environ["MDDOSE_CACHE_DIR"] = old
    res = {"data": str(data), "patients": len(dirs),
           "csv_median_s": statistics.median(csv_times), "csv_max_s": max(csv_times),
           "csv_all_s": sum(csv_times),
           "cache_median_s": statistics.median(cache_times), "cache_max_s": max(cache_times),
           "cache_all_s": sum(cache_times),
           "csv_target_s": CSV_TARGET_S, "cache_target_s": CACHE_TARGET_S}
    res["csv_ok"] = res["csv_median_s"] <= CSV_TARGET_S
    res["cache_ok"] = res["cache_median_s"] <= CACHE_TARGET_S
    res["speedup"] = res["csv_median_s"] / max(res["cache_median_s"], 1e-9)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        _print_table(res)
    return 0


def _no_parse(path):
    raise RuntimeError(f"cache miss for {path} during the cache benchmark")


def _print_table(r: dict) -> None:
    ok = {True: "ok", False: "MISSED"}
    print(f"OpenKBP I/O benchmark: {r['patients']} patients from {r['data']}")
    print(f"{'measurement':<34}{'median':>10}{'max':>10}{'all':>10}{'target':>10}  status")
    print(f"{'one patient from CSV (s)':<34}{r['csv_median_s']:>10.3f}{r['csv_max_s']:>10.3f}"
          f"{r['csv_all_s']:>10.2f}{r['csv_target_s']:>10.3f}  {ok[r['csv_ok']]}")
    print(f"{'one patient from cache (s)':<34}{r['cache_median_s']:>10.4f}{r['cache_max_s']:>10.4f}"
          f"{r['cache_all_s']:>10.2f}{r['cache_target_s']:>10.3f}  {ok[r['cache_ok']]}")
    print(f"cache speed-up: {r['speedup']:.0f}x")
