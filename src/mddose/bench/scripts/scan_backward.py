"""The CPU scan kernel's forward and backward timed apart, for the bidirectional gated scan of a Mamba mixer.

One call of :func:`mddose.ops.scan_cpu.selective_scan_multi_cpu` as the mixers make it (two directions, D, z gate,
delta bias, softplus), then its backward alone (``torch.autograd.grad`` with a given output gradient, the graph
kept), best of ``--repeats`` per chunk length, and the backward / forward ratio (issue 21's target: ≤ 1.5):

    python -m mddose.bench.scripts.scan_backward --batch 8 --channels 64 --length 4096 --chunks 128 64 32
"""

from __future__ import annotations

import argparse
import time

import torch


def scan_inputs(batch: int, channels: int, length: int, state: int, seed: int = 0) -> tuple:
    """Random leaves of a two-direction mixer scan: u, delta (B, 2C, L); A (2C, N); B, C (B, 2, L, N); D, bias (2C,);
    z (B, C, L). A is negative, as a trained Mamba's -exp(A_log)."""
    g = torch.Generator().manual_seed(seed)
    dim = 2 * channels

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    u, delta = leaf(batch, dim, length), leaf(batch, dim, length, scale=0.5)
    A = (-(torch.rand(dim, state, generator=g) * 4 + 0.1)).requires_grad_()
    Bm, Cm = leaf(batch, 2, length, state), leaf(batch, 2, length, state)
    return u, delta, A, Bm, Cm, leaf(dim), leaf(batch, channels, length), leaf(dim)


def time_chunk(leaves: tuple, chunk: int, repeats: int) -> dict:
    """Best forward and backward seconds of ``repeats`` calls (after one warm-up) at this chunk length."""
    from mddose.ops.scan_cpu import selective_scan_multi_cpu

    u, delta, A, Bm, Cm, D, z, bias = leaves
    fwd, bwd = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        out = selective_scan_multi_cpu(u, delta, A, Bm, Cm, D, z, bias, True, (False, True), chunk)
        t1 = time.perf_counter()
        grad = torch.ones_like(out)
        t2 = time.perf_counter()
        torch.autograd.grad(out, leaves, grad)
        t3 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            bwd.append(t3 - t2)
    return {"chunk": chunk, "forward_s": min(fwd), "backward_s": min(bwd), "ratio": min(bwd) / min(fwd)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--channels", type=int, default=64, help="channels per direction (the mixer's d_inner)")
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--state", type=int, default=16)
    ap.add_argument("--chunks", type=int, nargs="+", default=[128])
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    for name in ("batch", "channels", "length", "state", "repeats", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be ≥ 1")
    if any(c < 1 for c in args.chunks):
        ap.error("--chunks must be ≥ 1")
    torch.set_num_threads(args.threads)
    leaves = scan_inputs(args.batch, args.channels, args.length, args.state)
    print(f"B={args.batch} channels=2x{args.channels} L={args.length} N={args.state} threads={args.threads}")
    for chunk in args.chunks:
        r = time_chunk(leaves, chunk, args.repeats)
        print(f"chunk {chunk:4d}: forward {r['forward_s'] * 1e3:7.1f} ms  backward {r['backward_s'] * 1e3:7.1f} ms  "
              f"backward/forward {r['ratio']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
