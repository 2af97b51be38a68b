"""``mddose bench scan`` — selective scan: reference vs fast CPU kernel vs the chunked ``torch`` backend vs
mambapy's parallel scan (and mamba-ssm's CUDA kernel with ``--device cuda``).

Every case (implementation × forward / forward+backward × batch × L) runs in a fresh subprocess
(``python -m mddose.bench.scan --worker ...``) which reports:

* time: the minimum over at least ``--repeats`` timed calls after one warm-up call (calls under a
  second are repeated for about a second, at most 50 times; a single call when the warm-up already
  took over a second, none beyond the warm-up when it took over ``--max-seconds``/3);
* peak memory: ``ru_maxrss`` after the warm-up call minus ``ru_maxrss`` just before it, i.e. the
  extra resident memory of one call over a baseline taken after imports and input creation (on CUDA:
  ``torch.cuda.max_memory_allocated`` growth; times there are synchronised).

Cases whose time or memory, extrapolated linearly in batch × L from the same implementation and
mode at a smaller size, would exceed ``--max-seconds`` per call or ``--max-memory-gb`` are skipped (shown with the
estimate). mambapy is timed as in ``mambapy.mamba.MambaBlock.selective_scan``: build
deltaA = exp(delta A) and BX = delta B x as (B, L, D, N) tensors, ``pscan``, then y = hs @ C + D x;
its inputs are created directly in its (B, L, D) layout. Fast and reference compute the same
function (out = scan + D u, no gate, no softplus) on (B, D, L) inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mddose.utils.config import int_at_least, positive_number

IMPLS = ("reference", "fast", "torch", "mambapy", "mamba-ssm")
DEFAULT_IMPLS = {"cpu": ("reference", "fast", "torch", "mambapy"), "cuda": ("reference", "torch", "mambapy", "mamba-ssm")}
MODES = ("fwd", "fwd+bwd")


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no per-case progress lines on stderr")
    parser.add_argument("--lengths", type=int_at_least(1), nargs="+", default=[1024, 4096, 16384],
                        help="sequence lengths L")
    parser.add_argument("--batches", type=int_at_least(1), nargs="+", default=[1, 8], help="batch sizes")
    parser.add_argument("--dim", type=int_at_least(1), default=192, help="channels D (default 192)")
    parser.add_argument("--state", type=int_at_least(1), default=16, help="state size N (default 16)")
    parser.add_argument("--repeats", type=int_at_least(1), default=3, help="timed calls per case (min is reported)")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=None,
                        help="implementations (default: reference fast torch mambapy; on cuda: reference torch "
                             "mambapy mamba-ssm)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the inputs live")
    parser.add_argument("--max-seconds", type=positive_number, default=20.0,
                        help="skip a case whose estimated time per call exceeds this (default 20)")
    parser.add_argument("--max-memory-gb", type=positive_number, default=None,
                        help="skip a case whose estimated peak memory exceeds this (default: half of MemAvailable)")


def _mem_available_gb() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 8.0


def _run_case(impl: str, mode: str, batch: int, seqlen: int, args) -> dict:
    cmd = [sys.executable, "-m", "mddose.bench.scan", "--worker", impl, mode, str(batch), str(seqlen),
           str(args.dim), str(args.state), str(args.repeats), str(args.max_seconds), getattr(args, "device", "cpu")]
    timeout = 60 + 6 * args.max_seconds
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"skipped (timeout after {timeout:.0f} s)"}
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
        return {"status": f"failed ({tail[:120]})"}
    return {"status": "ok", **json.loads(res.stdout.strip().splitlines()[-1])}


def _estimate(results: list[dict], impl: str, mode: str, batch: int, seqlen: int) -> tuple[float, float] | None:
    """(seconds, GiB) extrapolated linearly in the work batch × L from the largest measured smaller case
    of the same implementation and mode, or None when there is none."""
    work = batch * seqlen
    done = [r for r in results if (r["impl"], r["mode"]) == (impl, mode) and r["status"] == "ok"
            and r["batch"] * r["L"] <= work and (r["batch"], r["L"]) != (batch, seqlen)]
    if not done:
        return None
    ref = max(done, key=lambda r: (r["batch"] * r["L"], r["L"]))
    scale = work / (ref["batch"] * ref["L"])
    return ref["time_ms"] / 1e3 * scale, ref["peak_mb"] / 1024 * scale


def run_all(args) -> dict:
    """Run every case; returns {"config": ..., "results": [row, ...]}."""
    import torch

    from mddose.ops.scan_cpu import load_kernel

    if args.impls is None:
        args.impls = list(DEFAULT_IMPLS[getattr(args, "device", "cpu")])
    if "fast" in args.impls and load_kernel(torch.float32) is None:
        print("warning: the CPU kernel could not be built; 'fast' falls back to the reference", file=sys.stderr)
    mem_limit = args.max_memory_gb if args.max_memory_gb is not None else _mem_available_gb() / 2
    results: list[dict] = []
    for batch in args.batches:
        for seqlen in sorted(args.lengths):
            for mode in MODES:
                for impl in args.impls:
                    row = {"impl": impl, "mode": mode, "batch": batch, "L": seqlen}
                    est = _estimate(results, impl, mode, batch, seqlen)
                    if est:
                        row.update(est_s=round(est[0], 2), est_gb=round(est[1], 2))
                    if est and est[0] > args.max_seconds:
                        row.update(status=f"skipped (too slow, est. {est[0]:.0f} s)")
                    elif est and est[1] > mem_limit:
                        row.update(status=f"skipped (memory, est. {est[1]:.1f} GiB)")
                    else:
                        row.update(_run_case(impl, mode, batch, seqlen, args))
                    results.append(row)
                    if not getattr(args, "quiet", False):
                        print(f"  {impl:9s} {mode:7s} B={batch} L={seqlen}: "
                              + (f"{row['time_ms']:.1f} ms, {row['peak_mb']:.0f} MB" if row["status"] == "ok"
                                 else row["status"]), file=sys.stderr, flush=True)
    config = {"D": args.dim, "N": args.state, "threads": torch.get_num_threads(), "repeats": args.repeats,
              "device": getattr(args, "device", "cpu"), "impls": list(args.impls),
              "memory": "ru_maxrss delta of one call in a fresh subprocess", "torch": torch.__version__,
              "max_memory_gb": round(mem_limit, 1)}
    return {"config": config, "results": results}


def _cell(row: dict | None, key: str, fmt: str) -> str:
    if row is None:
        return "-"
    return format(row[key], fmt) if row["status"] == "ok" else row["status"].split(" (")[0]


def format_table(report: dict) -> str:
    """One line per (batch, L, mode): each implementation's time and peak memory, and the ratios
    mambapy / fast (time and memory) and reference / torch (time)."""
    rows = {(r["impl"], r["mode"], r["batch"], r["L"]): r for r in report["results"]}
    keys = sorted({(b, L, m) for (_, m, b, L) in rows}, key=lambda k: (k[0], k[1], MODES.index(k[2])))
    cfg = report["config"]
    impls = [i for i in IMPLS if any(k[0] == i for k in rows)]
    short = {"reference": "ref", "fast": "fast", "torch": "torch", "mambapy": "mambapy", "mamba-ssm": "mssm"}
    lines = [f"selective scan, D={cfg['D']}, N={cfg['N']}, float32, {cfg.get('device', 'cpu')}, {cfg['threads']} threads; "
             f"time = min of >= {cfg['repeats']} calls; memory = {cfg['memory']}",
             f"{'B':>2} {'L':>6} {'mode':7} | " + " ".join(f"{short[i] + ' ms':>10}" for i in impls)
             + f" {'speedup':>8} {'ref/torch':>9} | " + " ".join(f"{short[i] + ' MB':>10}" for i in impls)
             + f" {'mem ratio':>9}"]

    def ratio(num, den, key, fmt):
        ok = num is not None and den is not None and num["status"] == den["status"] == "ok" and den[key] > 0
        return format(num[key] / den[key], fmt) if ok else "-"

    for b, L, m in keys:
        r = {i: rows.get((i, m, b, L)) for i in impls}
        fast, mp, ref, tor = r.get("fast"), r.get("mambapy"), r.get("reference"), r.get("torch")
        speed = ratio(mp, fast, "time_ms", ".1f")
        lines.append(f"{b:>2} {L:>6} {m:7} | " + " ".join(f"{_cell(r[i], 'time_ms', '.1f'):>10}" for i in impls)
                     + f" {speed + 'x' if speed != '-' else '-':>8} {ratio(ref, tor, 'time_ms', '.1f'):>9} | "
                     + " ".join(f"{_cell(r[i], 'peak_mb', '.0f'):>10}" for i in impls)
                     + f" {ratio(fast, mp, 'peak_mb', '.3f'):>9}")
    lines.append("speedup = mambapy time / fast time; ref/torch = reference time / torch-backend time; mem ratio = "
                 "fast peak / mambapy peak; skipped cases: see --json for estimates")
    return "\n".join(lines)


def run(args) -> int:
    report = run_all(args)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


# --------------------------------------------------------------------------- worker (subprocess side)

def _make_case(impl: str, mode: str, batch: int, seqlen: int, dim: int, dstate: int, device: str = "cpu"):
    """Inputs and a zero-argument callable running one forward (or forward+backward)."""
    import torch

    g = torch.Generator().manual_seed(0)
    grad = mode == "fwd+bwd"
    dev = lambda t: t.to(device).requires_grad_(grad)  # noqa: E731
    mk = lambda *s: dev(torch.randn(*s, generator=g))  # noqa: E731
    A = dev(-torch.rand(dim, dstate, generator=g) - 0.1)
    D = mk(dim)
    if impl == "mambapy":
        from mambapy.pscan import pscan

        x, delta = mk(batch, seqlen, dim), dev(torch.rand(batch, seqlen, dim, generator=g) * 0.1)
        B, C = mk(batch, seqlen, dstate), mk(batch, seqlen, dstate)

        def fn():
            delta_a = torch.exp(delta.unsqueeze(-1) * A)                      # (B, L, D, N)
            bx = delta.unsqueeze(-1) * B.unsqueeze(2) * x.unsqueeze(-1)       # (B, L, D, N)
            hs = pscan(delta_a, bx)
            return (hs @ C.unsqueeze(-1)).squeeze(3) + D * x
    else:
        from mddose.ops import selective_scan
        from mddose.ops.scan_cpu import load_kernel

        load_kernel(torch.float32)  # build/load before the memory baseline
        u, delta = mk(batch, dim, seqlen), dev(torch.rand(batch, dim, seqlen, generator=g) * 0.1)
        B, C = mk(batch, dstate, seqlen), mk(batch, dstate, seqlen)
        backend = {"reference": "ref", "fast": "cpu", "torch": "torch", "mamba-ssm": "cuda"}[impl]

        def fn():
            return selective_scan(u, delta, A, B, C, D, backend=backend)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if grad:
        return lambda: (fn().sum().backward(), sync())

    def no_grad():
        with torch.no_grad():
            fn()
        sync()
    return no_grad


def _worker_main(argv: list[str]) -> None:
    import gc
    import resource
    import time

    impl, mode = argv[0], argv[1]
    batch, seqlen, dim, dstate, repeats = (int(a) for a in argv[2:7])
    max_seconds = float(argv[7])
    device = argv[8] if len(argv) > 8 else "cpu"
    call = _make_case(impl, mode, batch, seqlen, dim, dstate, device)
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    call()
    warm = time.perf_counter() - t0
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    if device == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    # at least `repeats` calls; calls shorter than a second are repeated up to ~1 s (max 50) against noise
    n = 0 if warm > max_seconds / 3 else (1 if warm > 1.0 else max(repeats, 1, min(50, int(1.0 / max(warm, 1e-4)))))
    times = [warm]
    if n:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    print(json.dumps({"time_ms": min(times) * 1e3, "times_ms": [t * 1e3 for t in times], "peak_mb": peak_mb}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2:])
    else:
        import argparse

        p = argparse.ArgumentParser(prog="python -m mddose.bench.scan")
        add_arguments(p)
        sys.exit(run(p.parse_args()))
