"""Selective scan: reference (gradcheck), fast CPU kernel vs reference, validation, dispatch, fallback.

Every test of the fast path first checks that the compiled kernel is really loaded (:func:`require_kernel`):
a failed build would otherwise make it compare the reference with itself. Without a C compiler such a test
fails, unless ``MDDOSE_NO_COMPILER=1`` says that none is expected (then it is skipped).
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

from mddose.ops import scan as scan_mod
from mddose.ops import scan_cpu, selective_scan, selective_scan_ref
from mddose.utils import log as log_mod

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
#: set to 1 where no C compiler is expected: the fast-path tests are then skipped instead of failing
NO_COMPILER_ENV = "MDDOSE_NO_COMPILER"


def require_kernel(dtype: torch.dtype = torch.float32):
    """The loaded kernel library for ``dtype``; fails the test if it cannot be built (skips it when
    ``$MDDOSE_NO_COMPILER`` is set), so that a fast-path test never silently runs the reference."""
    lib = scan_cpu.load_kernel(dtype)
    if lib is None:
        msg = f"the CPU selective-scan kernel ({dtype}) could not be built (see the warning logged above)"
        if os.environ.get(NO_COMPILER_ENV, "").strip() not in ("", "0"):
            pytest.skip(f"{msg}; {NO_COMPILER_ENV} is set")
        pytest.fail(f"{msg}; set {NO_COMPILER_ENV}=1 where no C compiler is expected", pytrace=False)
    return lib


def make_inputs(b=2, d=4, seqlen=16, n=8, groups=None, *, use_d=True, use_z=True, use_bias=True,
                dtype=torch.float32, delta_scale=0.5, a_scale=2.0, seed=0) -> dict:
    """Random scan inputs as a dict of NAMES → tensor (or None)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    bc_shape = (b, n, seqlen) if groups is None else (b, groups, n, seqlen)
    return {
        "u": r(b, d, seqlen),
        "delta": torch.rand(b, d, seqlen, generator=g, dtype=dtype) * delta_scale,
        "A": -(torch.rand(d, n, generator=g, dtype=dtype) * a_scale + 0.05),
        "B": r(*bc_shape), "C": r(*bc_shape),
        "D": r(d) if use_d else None,
        "z": r(b, d, seqlen) if use_z else None,
        "delta_bias": r(d) * 0.2 if use_bias else None,
    }


def run_with_grads(inputs: dict, backend: str, softplus: bool, **kw):
    """Forward with return_last_state and backward of a random projection of (out, last).

    Returns a dict: "out", "last" and "d<name>" for each tensor input.
    """
    if backend in ("cpu", "cpu_chunk"):
        require_kernel(inputs["u"].dtype)
        assert scan_mod.resolve_backend(inputs["u"], inputs["A"], "cpu") == "cpu"
    leaves = {k: (None if v is None else v.clone().requires_grad_()) for k, v in inputs.items()}
    if backend == "cpu_chunk":
        out, last = scan_cpu.selective_scan_cpu(*leaves.values(), delta_softplus=softplus,
                                                return_last_state=True, **kw)
    else:
        out, last = selective_scan(*leaves.values(), delta_softplus=softplus, return_last_state=True,
                                   backend=backend)
    g = torch.Generator().manual_seed(123)
    w_out = torch.randn(out.shape, generator=g, dtype=out.dtype)
    w_last = torch.randn(last.shape, generator=g, dtype=last.dtype)
    ((out * w_out).sum() + (last * w_last).sum()).backward()
    res = {"out": out.detach(), "last": last.detach()}
    res.update({f"d{k}": v.grad for k, v in leaves.items() if v is not None})
    return res


def assert_close_scaled(actual: dict, expected: dict, rtol=1e-4, atol=2e-5):
    """Every entry close with an absolute tolerance relative to the entry's magnitude."""
    assert actual.keys() == expected.keys()
    for key, exp in expected.items():
        act = actual[key]
        assert torch.isfinite(act).all(), f"{key} has non-finite values"
        scale = float(exp.abs().max().clamp_min(1e-6))
        torch.testing.assert_close(act, exp, rtol=rtol, atol=atol * scale, msg=lambda m, k=key: f"{k}: {m}")


SIZES = {  # id → (batch, D, L, N, groups)
    "L1": (1, 4, 1, 8, None),
    "prime131": (2, 8, 131, 16, None),
    "long2048": (1, 2, 2048, 16, None),
    "batch3_grouped": (3, 6, 67, 4, 3),
}
OPTIONS = {  # id → (use_d, use_z, use_bias, softplus)
    "plain": (False, False, False, False),
    "all": (True, True, True, True),
    "D": (True, False, False, False),
    "z": (False, True, False, False),
    "bias_softplus": (False, False, True, True),
}


CASES = [pytest.param(SIZES[s], OPTIONS[o], id=f"{s}-{o}") for s in SIZES for o in OPTIONS
         if s != "long2048" or o in ("plain", "all", "z")]  # the reference is slower at large L


@pytest.mark.parametrize("size,opts", CASES)
def test_fast_cpu_matches_reference(size, opts):
    b, d, seqlen, n, groups = size
    use_d, use_z, use_bias, softplus = opts
    inputs = make_inputs(b, d, seqlen, n, groups, use_d=use_d, use_z=use_z, use_bias=use_bias)
    assert_close_scaled(run_with_grads(inputs, "cpu", softplus), run_with_grads(inputs, "ref", softplus))


@pytest.mark.parametrize("chunk", [1, 7, 131, 1000])
def test_chunk_boundaries(chunk):
    inputs = make_inputs(2, 3, 131, 5)
    expected = run_with_grads(inputs, "ref", True)
    assert_close_scaled(run_with_grads(inputs, "cpu_chunk", True, chunk=chunk), expected)


def test_mixed_group_counts():
    inputs = make_inputs(2, 6, 40, 4, groups=2)
    inputs["C"] = torch.randn(2, 3, 4, 40)
    assert_close_scaled(run_with_grads(inputs, "cpu", True), run_with_grads(inputs, "ref", True))


@pytest.mark.parametrize("groups", [None, 3])
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_thread_count_does_not_change_results(threads, groups):
    # large enough (rows * L * N >= 65536) for the kernel to start threads; rows of one (b, g) are
    # split over threads, so the dB / dC flushes of several threads meet in the same output block
    inputs = make_inputs(2, 21, 200, 16, groups=groups)
    expected = run_with_grads(inputs, "ref", True)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        actual = run_with_grads(inputs, "cpu", True)
    finally:
        torch.set_num_threads(old)
    assert_close_scaled(actual, expected)


@pytest.mark.parametrize("softplus", [False, True])
def test_large_delta_times_a_is_stable(softplus):
    inputs = make_inputs(2, 4, 100, 8, delta_scale=20.0, a_scale=100.0)  # delta ~ 10, A ~ -50
    actual, expected = run_with_grads(inputs, "cpu", softplus), run_with_grads(inputs, "ref", softplus)
    assert all(torch.isfinite(v).all() for v in expected.values())
    assert_close_scaled(actual, expected)


@pytest.mark.parametrize("backend", ["cpu", "ref"])
def test_return_last_state_contract(backend):
    if backend == "cpu":
        require_kernel()
    inputs = make_inputs(2, 3, 20, 4)
    out = selective_scan(*inputs.values(), backend=backend)
    out2, last = selective_scan(*inputs.values(), return_last_state=True, backend=backend)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 20)
    torch.testing.assert_close(out, out2)
    assert last.shape == (2, 3, 4)
    # the last state of the first 19 steps, advanced by one step by hand, is the last state of 20
    short = {k: (v[..., :19] if v is not None and v.dim() >= 3 else v) for k, v in inputs.items()}
    _, h19 = selective_scan(*short.values(), return_last_state=True, backend=backend)
    dt = inputs["delta"][..., 19] + inputs["delta_bias"]
    h20 = torch.exp(dt[..., None] * inputs["A"]) * h19 + (dt * inputs["u"][..., 19])[..., None] \
        * inputs["B"][:, None, :, 19]
    torch.testing.assert_close(last, h20, rtol=1e-5, atol=1e-5)


def test_fast_backward_saves_no_full_state():
    require_kernel()
    b, d, seqlen, n = 1, 16, 256, 16
    inputs = make_inputs(b, d, seqlen, n)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        selective_scan(*[None if v is None else v.requires_grad_() for v in inputs.values()], backend="cpu")
    assert sizes and max(sizes) <= b * d * seqlen * n // 8  # largest saved: (B, D, L) or (B, L, N)


@pytest.mark.parametrize("groups", [None, 2])
def test_reference_gradcheck_float64(groups):
    inputs = make_inputs(1, 2, 5, 3, groups, dtype=torch.float64, seed=1)
    leaves = [v.requires_grad_() for v in inputs.values()]
    assert torch.autograd.gradcheck(
        lambda *x: selective_scan_ref(*x, delta_softplus=True, return_last_state=True), leaves)


def test_fast_cpu_gradcheck_float64():
    require_kernel(torch.float64)
    inputs = make_inputs(2, 2, 9, 3, dtype=torch.float64, seed=2)
    leaves = [v.requires_grad_() for v in inputs.values()]
    assert torch.autograd.gradcheck(
        lambda *x: scan_cpu.selective_scan_cpu(*x, delta_softplus=True, return_last_state=True, chunk=4),
        leaves)


def _bad(name):
    inputs = make_inputs(2, 4, 10, 3)
    replacements = {
        "u_rank": ("u", torch.zeros(2, 4)),
        "delta": ("delta", torch.zeros(2, 4, 11)),
        "A": ("A", torch.zeros(5, 3)),
        "B": ("B", torch.zeros(2, 2, 10)),
        "C_groups": ("C", torch.zeros(2, 3, 3, 10)),
        "D": ("D", torch.zeros(3)),
        "z": ("z", torch.zeros(2, 4, 9)),
        "delta_bias": ("delta_bias", torch.zeros(4, 1)),
    }
    key, value = replacements[name]
    inputs[key] = value
    return key, inputs


@pytest.mark.parametrize("backend", ["cpu", "ref"])
@pytest.mark.parametrize("case", ["u_rank", "delta", "A", "B", "C_groups", "D", "z", "delta_bias"])
def test_mismatched_shapes_raise(case, backend):
    key, inputs = _bad(case)
    with pytest.raises(ValueError, match=rf"selective_scan: {key.split('_')[0]}"):
        selective_scan(*inputs.values(), backend=backend)


@pytest.mark.parametrize("backend", ["cpu", "ref"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_raises(name, backend, bad):
    inputs = make_inputs(1, 3, 12, 4)
    inputs[name] = inputs[name].clone()
    inputs[name].view(-1)[-1] = bad
    with pytest.raises(ValueError, match=rf"selective_scan: {name} contains NaN or infinite"):
        selective_scan(*inputs.values(), backend=backend)


@pytest.mark.parametrize("env,arg,expected", [
    ("ref", "auto", "ref"), ("cpu", "auto", "cpu"), ("", "auto", "cpu"), ("REF", "auto", "ref"),
    ("ref", "cpu", "cpu"), ("cpu", "ref", "ref"),
])
def test_backend_env_var_and_argument(monkeypatch, env, arg, expected):
    monkeypatch.setenv("MDDOSE_SCAN_BACKEND", env)
    calls = []
    real_ref = scan_mod.selective_scan_ref
    monkeypatch.setattr(scan_mod, "selective_scan_ref", lambda *a, **k: calls.append(1) or real_ref(*a, **k))
    inputs = make_inputs(1, 2, 5, 3)
    assert scan_mod.resolve_backend(inputs["u"], inputs["A"], arg) == expected
    selective_scan(*inputs.values(), backend=arg)
    assert bool(calls) == (expected == "ref")


@pytest.mark.parametrize("env,arg", [("fast", "auto"), ("", "gpu")])
def test_unknown_backend_raises(monkeypatch, env, arg):
    monkeypatch.setenv("MDDOSE_SCAN_BACKEND", env)
    with pytest.raises(ValueError, match="is not one of"):
        selective_scan(*make_inputs(1, 2, 5, 3).values(), backend=arg)


def test_cuda_backend_needs_cuda_tensors():
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        selective_scan(*make_inputs(1, 2, 5, 3).values(), backend="cuda")


@pytest.fixture
def fresh_kernel_state(monkeypatch, tmp_path):
    """Empty kernel cache dir, no kernels loaded in this process, log_once forgotten."""
    monkeypatch.setenv("MDDOSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(scan_cpu, "_kernels", {})
    monkeypatch.setattr(log_mod, "_seen", set())
    return tmp_path


def _fail_compile(*args, **kwargs):
    raise RuntimeError("simulated compiler failure")


@pytest.mark.parametrize("how", ["compile_error", "no_compiler"])
def test_compile_failure_falls_back_to_reference(fresh_kernel_state, monkeypatch, caplog, how):
    if how == "compile_error":
        monkeypatch.setattr(scan_cpu, "compile_kernel", _fail_compile)
    else:
        monkeypatch.setenv("CC", str(fresh_kernel_state / "no-such-compiler"))
    inputs = make_inputs(1, 3, 20, 4)
    with caplog.at_level(logging.INFO, logger="mddose"):
        out = selective_scan(*inputs.values(), delta_softplus=True)
        selective_scan(*inputs.values(), delta_softplus=True, backend="cpu")
    torch.testing.assert_close(out, selective_scan_ref(*inputs.values(), delta_softplus=True))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "falling back to the reference" in warnings[0].getMessage()
    assert any("'ref' backend" in r.getMessage() for r in caplog.records)
    assert not list(fresh_kernel_state.rglob("*.so"))


def test_fast_path_tests_fail_when_the_kernel_cannot_be_built(fresh_kernel_state, monkeypatch):
    monkeypatch.setattr(scan_cpu, "compile_kernel", _fail_compile)
    inputs = make_inputs(1, 3, 20, 4)
    monkeypatch.delenv(NO_COMPILER_ENV, raising=False)
    with pytest.raises(pytest.fail.Exception, match="could not be built"):
        run_with_grads(inputs, "cpu", True)
    monkeypatch.setenv(NO_COMPILER_ENV, "1")
    with pytest.raises(pytest.skip.Exception, match=NO_COMPILER_ENV):
        run_with_grads(inputs, "cpu", True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_auto_dispatch_uses_the_loaded_kernel(monkeypatch, dtype):
    monkeypatch.delenv("MDDOSE_SCAN_BACKEND", raising=False)
    require_kernel(dtype)
    inputs = make_inputs(1, 3, 20, 4, dtype=dtype)
    assert scan_mod.resolve_backend(inputs["u"], inputs["A"]) == "cpu"


def test_kernel_build_caches_one_library(fresh_kernel_state):
    assert scan_cpu.load_kernel(torch.float32) is not None
    libs = sorted(p.name for p in (fresh_kernel_state / "kernels").iterdir())
    assert len(libs) == 1 and libs[0].startswith("selective_scan_f32_") and libs[0].endswith(".so")
    scan_cpu._kernels.clear()
    assert scan_cpu.load_kernel(torch.float32) is not None  # reloaded from the cache, not rebuilt
    assert sorted(p.name for p in (fresh_kernel_state / "kernels").iterdir()) == libs


def test_unwritable_cache_dir_uses_temp_dir(fresh_kernel_state, monkeypatch):
    blocker = fresh_kernel_state / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MDDOSE_CACHE_DIR", str(blocker))
    monkeypatch.setattr(scan_cpu.tempfile, "gettempdir", lambda: str(fresh_kernel_state / "tmp"))
    assert scan_cpu.load_kernel(torch.float32) is not None
    assert len(list((fresh_kernel_state / "tmp").rglob("selective_scan_f32_*.so"))) == 1


def test_cuda_dispatch_calls_mamba_ssm_with_the_same_arguments(monkeypatch):
    seen = {}

    def fake_fn(*args):
        seen["args"] = args
        return "sentinel"

    monkeypatch.setattr(scan_mod, "_mamba_ssm_fn", lambda: fake_fn)
    monkeypatch.setattr(scan_mod, "resolve_backend", lambda u, A, backend: "cuda")
    inputs = make_inputs(1, 2, 5, 3)
    assert selective_scan(*inputs.values(), delta_softplus=True, return_last_state=True) == "sentinel"
    assert seen["args"][:8] == tuple(inputs.values()) and seen["args"][8:] == (True, True)


def test_bfloat16_computes_in_float32():
    require_kernel()
    inputs = make_inputs(1, 3, 30, 4)
    low = {k: (None if v is None else v.to(torch.bfloat16)) for k, v in inputs.items()}
    out = selective_scan(*low.values(), backend="cpu")
    assert out.dtype == torch.bfloat16
    ref = selective_scan_ref(*[None if v is None else v.float() for v in low.values()])
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))


# --------------------------------------------------------------------------- benchmark helpers (bench/scan.py)

@pytest.mark.parametrize("impl", ["reference", "fast", "torch", "mambapy"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_bench_case_runs(impl, mode):
    from mddose.bench import scan as bench

    if impl == "mambapy":
        pytest.importorskip("mambapy")
    bench._make_case(impl, mode, batch=2, seqlen=16, dim=4, dstate=3)()


def test_bench_skips_by_extrapolation_and_formats(monkeypatch, capsys):
    import argparse

    from mddose.bench import scan as bench

    fake = {"reference": (2000.0, 100.0), "fast": (1.0, 1.0), "torch": (100.0, 100.0),
            "mambapy": (10.0, 50.0)}  # ms, MB at L=1024
    calls = []

    def fake_case(impl, mode, batch, seqlen, args):
        calls.append((impl, mode, seqlen))
        t, m = fake[impl]
        return {"status": "ok", "time_ms": t * seqlen / 1024, "peak_mb": m * seqlen / 1024}

    monkeypatch.setattr(bench, "_run_case", fake_case)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--lengths", "1024", "16384", "--batches", "1", "--max-seconds", "10",
                              "--max-memory-gb", "1", "--quiet"])
    assert bench.run(args) == 0
    table = capsys.readouterr().out
    assert ("reference", "fwd", 16384) not in calls and ("mambapy", "fwd", 16384) in calls
    assert ("fast", "fwd+bwd", 16384) in calls
    assert "skipped" in table and "10.0x" in table and "0.020" in table and "20.0" in table  # ref/torch


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_non_finite_detected_in_other_dtypes(dtype):
    inputs = {k: (None if v is None else v.to(dtype)) for k, v in make_inputs(1, 3, 12, 4).items()}
    inputs["B"][0, 1, 5] = float("nan")
    with pytest.raises(ValueError, match="selective_scan: B contains NaN"):
        selective_scan(*inputs.values(), backend="cpu")


def test_transposed_views_of_b_c_need_no_copy_and_match():
    require_kernel()
    inputs = make_inputs(2, 4, 33, 5, groups=2)
    for key in ("B", "C"):  # (B, G, N, L) views of contiguous (B, G, L, N) tensors, as Mamba blocks make them
        inputs[key] = inputs[key].transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not inputs[key].is_contiguous()
        assert scan_cpu._layout_bc(inputs[key]).data_ptr() == inputs[key].data_ptr()
    inputs["B"][0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="selective_scan: B contains NaN"):
        selective_scan(*inputs.values(), backend="cpu")
    inputs["B"][0, 1, 2, 3] = 0.5
    assert_close_scaled(run_with_grads(inputs, "cpu", True), run_with_grads(inputs, "ref", True))


@pytest.mark.parametrize("machine,flags,wide", [("x86_64", "flags : fpu avx2 avx512f avx512bw", True),
                                                ("x86_64", "flags : fpu avx2 fma", False),
                                                ("aarch64", "Features : fp asimd avx512f", False)])
def test_512_bit_vectors_only_on_avx512_x86(monkeypatch, machine, flags, wide):
    from mddose.ops import scan_cpu

    monkeypatch.setattr(scan_cpu.platform, "machine", lambda: machine)
    monkeypatch.setattr(scan_cpu, "_machine_id", lambda: f"{machine}||{flags}")
    assert ("-mprefer-vector-width=512" in scan_cpu.cflags()) is wide
    assert scan_cpu.cflags()[:len(scan_cpu.CFLAGS)] == scan_cpu.CFLAGS
