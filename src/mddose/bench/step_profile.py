"""Where the time of a 2D diffusion model goes: torch-profiler shares of one training step and one denoiser call.

``mddose bench model --sections profile`` (or, standalone and against any checkout of mddose whose model
registry has ``build_model``/``available_models``/``model_info``, e.g. an older one for "before" numbers)::

    PYTHONPATH=<that checkout>/src python -P <this file>   # -P: do not put bench/ (io.py!) on sys.path [--models md-dose sp-diffdose] [--json]

Cases (each 2D diffusion model of the registry):

* ``train``: one training step, forward + backward + Adam, ``small`` at 128² batch 8 and ``paper`` at 256²
  batch 1 (diffusion loss at a random timestep);
* ``call``: one denoiser call ``model(x_t, t, cond)`` under ``torch.inference_mode``, batch 1, same sizes.

Each case is warmed up once, then profiled once (``torch.profiler``, CPU activities, the process's
intra-op threads). Every op's *self* CPU time is put into one category:

* ``scan fwd`` / ``scan bwd``: the selective scan's autograd Function (the forward and backward methods of
  every ``torch.autograd.Function`` in :mod:`mddose.ops` are wrapped in ``record_function`` ranges named
  ``mddose::scan_fwd`` / ``mddose::scan_bwd``; their self time is the kernel itself, the copies done
  inside them count as layout copies); a scan not done by such a Function (the reference, the ``torch``
  backend) is spread over the other categories;
* ``projections`` (mm / addmm / bmm / linear / matmul), ``convolutions``, ``norms`` (layer/group/batch
  norm), ``layout copies`` (copy_ / clone / contiguous / cat / stack / flip / _to_copy /
  repeat_interleave / index ops: memory moved without arithmetic), ``element-wise``, ``optimizer``
  (Adam's foreach ops) and ``rest``.

Shares are of the total op self time; ``wall`` is the step's wall-clock time (the gap to the op time is
Python and autograd bookkeeping outside any op). ``copies`` counts layout-copy op calls.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time

CATEGORIES = ("scan fwd", "scan bwd", "projections", "convolutions", "norms", "layout copies", "element-wise",
              "optimizer", "rest")
#: (preset, image size, training batch)
CASES = (("small", 128, 8), ("paper", 256, 1))
MODES = ("train", "call")

_PROJ = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul", "aten::addbmm",
         "aten::_addmm_activation", "aten::einsum")
_COPY = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::_cat", "aten::stack", "aten::flip",
         "aten::_to_copy", "aten::to", "aten::repeat_interleave", "aten::index_select", "aten::repeat",
         "aten::index", "aten::index_put_", "aten::_reshape_copy", "aten::roll", "aten::pad",
         "aten::constant_pad_nd", "aten::narrow_copy", "aten::flatten_dense_tensors")
_ELEMWISE = ("add", "sub", "mul", "div", "silu", "sigmoid", "exp", "log", "softplus", "gelu", "relu", "tanh",
             "neg", "pow", "sqrt", "rsqrt", "square", "where", "clamp", "sum", "mean", "fill_", "zero_",
             "expm1", "log1p", "cos", "sin", "abs", "lerp", "addcmul", "addcdiv", "threshold", "leaky_relu",
             "sigmoid_backward", "silu_backward", "softplus_backward", "gelu_backward", "cumsum", "max", "min",
             "maximum", "minimum", "reciprocal", "masked_fill", "erf", "sign", "ones_like", "zeros_like",
             "mse_loss", "mse_loss_backward", "l1_loss", "dropout", "native_dropout", "bernoulli_", "rand",
             "randn", "normal_", "uniform_", "randint", "div_", "mul_", "add_", "sub_", "exp_", "sqrt_")


def categorise(name: str) -> str:
    """Category (one of :data:`CATEGORIES`) of a profiler event name (its self time)."""
    if name == "mddose::scan_fwd":
        return "scan fwd"
    if name == "mddose::scan_bwd":
        return "scan bwd"
    low = name.lower()
    if "foreach" in low or low.startswith("optimizer."):
        return "optimizer"
    if "conv" in low and ("aten::" in low or "backward" in low.lower()):
        return "convolutions"
    if any(k in low for k in ("layer_norm", "group_norm", "batch_norm")):
        return "norms"
    if name in _PROJ or low.startswith(("mmbackward", "addmmbackward", "bmmbackward")):
        return "projections"
    if name in _COPY:
        return "layout copies"
    base = name.split("::")[-1]
    if name.startswith("aten::") and (base in _ELEMWISE or base.rstrip("_") in _ELEMWISE):
        return "element-wise"
    return "rest"


def _wrap_scan_functions() -> list:
    """Wrap forward/backward of every autograd Function in mddose.ops in record_function ranges; returns undo
    records (class, name, original)."""
    import importlib
    import inspect
    import pkgutil

    import torch

    import mddose.ops as ops

    undo = []
    for info in pkgutil.iter_modules(ops.__path__):
        try:
            mod = importlib.import_module(f"mddose.ops.{info.name}")
        except Exception:  # noqa: BLE001 - an optional module (e.g. Triton) that does not import here
            continue
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if not issubclass(cls, torch.autograd.Function) or cls.__module__ != mod.__name__:
                continue
            for meth, label in (("forward", "mddose::scan_fwd"), ("backward", "mddose::scan_bwd")):
                orig = cls.__dict__.get(meth)
                if not isinstance(orig, staticmethod):
                    continue

                def make(fn, label=label):
                    @functools.wraps(fn)
                    def wrapped(*args, **kwargs):
                        with torch.profiler.record_function(label):
                            return fn(*args, **kwargs)
                    return staticmethod(wrapped)

                setattr(cls, meth, make(orig.__func__))
                undo.append((cls, meth, orig))
    return undo


@contextlib.contextmanager
def scan_ranges():
    """Context in which the scan Functions of mddose.ops are visible to the profiler as named ranges."""
    undo = _wrap_scan_functions()
    try:
        yield
    finally:
        for cls, meth, orig in undo:
            setattr(cls, meth, orig)


def _case_fn(name: str, preset: str, size: int, batch: int, mode: str, in_channels: int = 9):
    import torch

    from mddose.models import build_model

    torch.manual_seed(0)
    model = build_model(name, preset=preset, in_channels=in_channels)
    if mode == "call":
        model.eval()
        x, c = torch.randn(1, 1, size, size), torch.randn(1, in_channels, size, size)
        t = torch.full((1,), 500, dtype=torch.long)

        def call():
            with torch.inference_mode():
                model(x, t, c)
        return call
    from mddose.diffusion import GaussianDiffusion

    model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    diff = GaussianDiffusion()
    x0, c = torch.rand(batch, 1, size, size), torch.randn(batch, in_channels, size, size)
    gen = torch.Generator().manual_seed(0)

    def step():
        loss = diff.loss(model, x0, c, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def profile_fn(fn) -> dict:
    """Profile one call of ``fn`` (after one warm-up call): wall seconds, op seconds, category shares, copies."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with scan_ranges():
        fn()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        wall = time.perf_counter() - t0
    per = dict.fromkeys(CATEGORIES, 0.0)
    copies = 0
    top: dict[str, float] = {}
    for evt in prof.key_averages():
        cat = categorise(evt.key)
        self_s = evt.self_cpu_time_total / 1e6
        per[cat] += self_s
        top[evt.key] = top.get(evt.key, 0.0) + self_s
        if cat == "layout copies" and evt.key in ("aten::copy_", "aten::cat", "aten::flip", "aten::stack"):
            copies += evt.count
    total = sum(per.values()) or 1.0
    del torch
    return {"wall_s": round(wall, 3), "op_s": round(total, 3),
            "shares": {k: round(v / total, 4) for k, v in per.items()}, "copies": copies,
            "top": [(k, round(v / total, 4)) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:8]]}


def diffusion_models_2d() -> list[str]:
    from mddose.models import available_models, model_info

    return [n for n in available_models() if not n.startswith("test-")
            and model_info(n).kind == "diffusion" and model_info(n).dims == 2]


def bench_profile(models: list[str] | None = None, cases=CASES, modes=MODES, progress: bool = True) -> list[dict]:
    """One row per (model, preset, mode): see the module docstring."""
    import torch

    rows = []
    for name in models or diffusion_models_2d():
        for preset, size, batch in cases:
            for mode in modes:
                b = batch if mode == "train" else 1
                res = profile_fn(_case_fn(name, preset, size, b, mode))
                row = {"model": name, "preset": preset, "size": size, "batch": b, "mode": mode,
                       "threads": torch.get_num_threads(), **res}
                rows.append(row)
                if progress:
                    print(f"  profiled {name} {preset} {mode} {size}² b{b}: {res['wall_s']} s", file=sys.stderr,
                          flush=True)
    return rows


def format_profile(rows: list[dict]) -> str:
    """Markdown: one line per case, category shares in %."""
    short = {"scan fwd": "scan f", "scan bwd": "scan b", "projections": "proj", "convolutions": "conv",
             "norms": "norm", "layout copies": "copies", "element-wise": "elem", "optimizer": "adam",
             "rest": "rest"}
    head = "| model | preset | mode | size, batch | wall s | op s | " + " | ".join(
        f"{short[c]} %" for c in CATEGORIES) + " | copy ops |"
    lines = [head, "|" + "---|" * 6 + "---:|" * (len(CATEGORIES) + 1)]
    for r in rows:
        shares = " | ".join(f"{100 * r['shares'][c]:.1f}" for c in CATEGORIES)
        lines.append(f"| {r['model']} | {r['preset']} | {r['mode']} | {r['size']}², {r['batch']} | {r['wall_s']:.3f} "
                     f"| {r['op_s']:.3f} | {shares} | {r['copies']} |")
    lines.append("")
    lines.append("scan f/b: the scan kernel's forward/backward (self time); copies: copy_/clone/cat/stack/flip/"
                 "_to_copy...; proj: mm/addmm/bmm; op s: total op self time; copy ops: calls of copy_/cat/flip/stack")
    ratios = _ratios(rows)
    if ratios:
        lines += ["", "| ratio (wall) | preset | mode | measured |", "|---|---|---|---:|"]
        lines += [f"| {q['ratio']} | {q['preset']} | {q['mode']} | {q['measured']:.2f} |" for q in ratios]
    return "\n".join(lines)


def _ratios(rows: list[dict]) -> list[dict]:
    t = {(r["model"], r["preset"], r["mode"]): r["wall_s"] for r in rows}
    out = []
    for other in ("sp-diffdose", "diffdp"):
        for (m, p, mode), s in t.items():
            if m == "md-dose" and (other, p, mode) in t:
                out.append({"ratio": f"md-dose / {other}", "preset": p, "mode": mode,
                            "measured": round(s / t[(other, p, mode)], 2)})
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="step_profile.py", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", help="2D diffusion models (default: all registered)")
    p.add_argument("--presets", nargs="+", choices=[c[0] for c in CASES], default=[c[0] for c in CASES])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = bench_profile(args.models, [c for c in CASES if c[0] in args.presets], args.modes, not args.json)
    print(json.dumps(rows, indent=2) if args.json else format_profile(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
