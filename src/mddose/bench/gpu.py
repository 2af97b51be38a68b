"""``mddose bench gpu`` — the GPU check: one command to run whenever a CUDA machine is lent (≤ 10 minutes).

Steps (each bounded in time, each reported even if a later one fails):

1. ``tests``: the CUDA-marked tests (``pytest -m cuda tests/ops tests/nn tests/models``);
2. ``train``: each 2D diffusion model (``paper`` preset, 128², batch 8) trained 20 steps with AMP (bf16
   autocast, Adam): seconds per step (median of the last 10) and whether the loss stayed finite;
3. ``table2``: the paper's Table 2 on the GPU (:func:`mddose.bench.table2.bench_table2` with
   ``device="cuda"``): seconds per denoiser call at 256², batch 1, and the ratios MD-Dose / SP-DiffDose
   and MD-Dose / DiffDP beside the paper's 0.60 / 0.72 (RTX 3090);
4. ``scan``: ``mddose bench scan --device cuda`` (reference, the chunked ``torch`` backend, mambapy, mamba-ssm
   where installed) at L = 1024 / 4096 / 16384, batch 1 and 8.

It also says which scan backend the models used (``mamba-ssm`` present or not). Usage::

    mddose bench gpu [--steps train table2 scan tests] [--json]

Without CUDA it prints that nothing was run and returns 0 (so it is safe in any environment).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from mddose.utils.config import int_at_least

STEPS = ("tests", "train", "table2", "scan")


def add_arguments(parser) -> None:
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--train-steps", type=int_at_least(1), default=20)
    parser.add_argument("--json", action="store_true", help="print JSON")


def run_tests(timeout: int = 180) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/ops", "tests/nn", "tests/models"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout} s"}
    tail = (res.stdout.strip().splitlines() or [""])[-1]
    return {"status": "ok" if res.returncode in (0, 5) else f"failed (exit {res.returncode})", "summary": tail}


def train_amp(steps: int = 20, size: int = 128, batch: int = 8, preset: str = "paper") -> list[dict]:
    """Each 2D diffusion model, ``steps`` Adam steps under bf16 autocast on CUDA."""
    import torch

    from mddose.bench.step_profile import diffusion_models_2d
    from mddose.diffusion import GaussianDiffusion
    from mddose.models import build_model

    rows = []
    for name in diffusion_models_2d():
        torch.manual_seed(0)
        model = build_model(name, preset=preset, in_channels=9).cuda().train()
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        diff = GaussianDiffusion()
        x0 = torch.rand(batch, 1, size, size, device="cuda")
        c = torch.randn(batch, 9, size, size, device="cuda")
        times, losses = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = diff.loss(model, x0, c)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            losses.append(float(loss))
        rows.append({"model": name, "preset": preset, "size": size, "batch": batch, "steps": steps,
                     "s_per_step": round(statistics.median(times[len(times) // 2:]), 4),
                     "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
                     "finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
                     "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
        del model, opt
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    md = next((r for r in rows if r["model"] == "md-dose"), None)
    if md:
        md["ratios"] = {f"md-dose/{r['model']}": round(md["s_per_step"] / r["s_per_step"], 2) for r in rows if r is not md}
    return rows


def scan_compare(timeout: int = 240) -> dict:
    cmd = [sys.executable, "-m", "mddose.bench.scan", "--device", "cuda", "--lengths", "1024", "4096", "16384",
           "--batches", "1", "8", "--max-seconds", "5", "--quiet"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout} s"}
    return {"status": "ok" if res.returncode == 0 else f"failed (exit {res.returncode})",
            "table": res.stdout.strip() or res.stderr.strip()[-2000:]}


def run(args) -> int:
    import torch

    if not torch.cuda.is_available():
        print("mddose bench gpu: no CUDA device here; nothing was run")
        return 0
    from mddose.ops.scan import _mamba_ssm_fn

    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                 "scan_backend_on_cuda": "cuda (mamba-ssm)" if _mamba_ssm_fn() is not None else "torch (chunked)"}
    steps = {"tests": run_tests, "train": lambda: train_amp(args.train_steps),
             "table2": lambda: _table2(), "scan": scan_compare}
    for step in STEPS:
        if step not in args.steps:
            continue
        t0 = time.perf_counter()
        try:
            res[step] = steps[step]()
        except Exception as exc:  # noqa: BLE001 - report and go on with the next step
            res[step] = {"status": f"failed ({type(exc).__name__}: {str(exc)[:300]})"}
        res[f"{step}_seconds"] = round(time.perf_counter() - t0, 1)
        if not args.json:
            print(f"[{step}] done in {res[f'{step}_seconds']} s", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['device']}, torch {res['torch']}, scan on CUDA: {res['scan_backend_on_cuda']}")
    for step in STEPS:
        if step not in res:
            continue
        print(f"\n[{step}]")
        val = res[step]
        if step == "table2" and isinstance(val, dict) and "rows" in val:
            from mddose.bench.table2 import format_table2
            print(format_table2(val))
        elif step == "scan" and isinstance(val, dict) and "table" in val:
            print(val["table"])
        else:
            for row in val if isinstance(val, list) else [val]:
                print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def _table2() -> dict:
    from mddose.bench.table2 import bench_table2

    return bench_table2(3, progress=False, device="cuda")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m mddose.bench.gpu")
    add_arguments(p)
    sys.exit(run(p.parse_args()))
