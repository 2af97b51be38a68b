"""The ``torch`` backend (chunked selective scan in plain PyTorch) against the reference: outputs, last state and
gradients on the CPU; dispatch; the same on CUDA where one is present (``-m cuda``)."""

from __future__ import annotations

import pytest
import torch

from mddose.ops import scan as scan_mod
from mddose.ops import selective_scan, selective_scan_ref
from mddose.ops.scan_torch import chunk_size, selective_scan_torch
from tests.ops.test_scan import OPTIONS, assert_close_scaled, make_inputs

SIZES = {  # id → (batch, D, L, N, groups)
    "L1": (1, 3, 1, 4, None),
    "L7": (2, 4, 7, 8, None),
    "L64": (1, 4, 64, 16, None),
    "prime131": (2, 5, 131, 16, None),
    "grouped300": (2, 6, 300, 4, 3),
}


def _run(inputs: dict, fn, softplus: bool, **kw) -> dict:
    leaves = {k: (None if v is None else v.clone().requires_grad_()) for k, v in inputs.items()}
    out, last = fn(*leaves.values(), delta_softplus=softplus, return_last_state=True, **kw)
    g = torch.Generator().manual_seed(7)
    w_out = torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)
    w_last = torch.randn(last.shape, generator=g, dtype=last.dtype).to(last.device)
    ((out * w_out).sum() + (last * w_last).sum()).backward()
    res = {"out": out.detach(), "last": last.detach()}
    res.update({f"d{k}": v.grad for k, v in leaves.items() if v is not None})
    return res


@pytest.mark.parametrize("chunk", [None, 8, 13])
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_torch_backend_matches_reference(size, opts, chunk):
    b, d, seqlen, n, groups = size
    use_d, use_z, use_bias, softplus = opts
    inputs = make_inputs(b, d, seqlen, n, groups, use_d=use_d, use_z=use_z, use_bias=use_bias)
    expected = _run(inputs, selective_scan_ref, softplus)
    actual = _run(inputs, selective_scan_torch, softplus, chunk=chunk)
    assert_close_scaled(actual, expected)


def test_torch_backend_strong_decay_is_stable():
    """Large delta * |A| (decays far below float32's range over a chunk) stays finite and exact."""
    inputs = make_inputs(2, 4, 200, 8, delta_scale=30.0, a_scale=20.0)
    expected = _run(inputs, selective_scan_ref, True)
    actual = _run(inputs, selective_scan_torch, True)
    assert_close_scaled(actual, expected)


def test_torch_backend_gradcheck_float64():
    inputs = make_inputs(1, 2, 11, 3, dtype=torch.float64)
    leaves = tuple(v.clone().requires_grad_() for v in inputs.values())
    assert torch.autograd.gradcheck(lambda *a: selective_scan_torch(*a, delta_softplus=True, chunk=4), leaves)


@pytest.mark.parametrize("seqlen,expected", [(1, 8), (64, 8), (65, 16), (4096, 64), (16384, 128), (10**6, 256)])
def test_chunk_size_is_about_sqrt_l(seqlen, expected):
    assert chunk_size(seqlen) == expected


@pytest.mark.parametrize("env,arg", [("torch", "auto"), ("", "torch"), ("cpu", "torch")])
def test_torch_backend_selected_by_env_or_argument(monkeypatch, env, arg):
    monkeypatch.setenv("MDDOSE_SCAN_BACKEND", env)
    calls = []
    import mddose.ops.scan_torch as st

    real = st.selective_scan_torch
    monkeypatch.setattr(st, "selective_scan_torch", lambda *a, **k: calls.append(1) or real(*a, **k))
    inputs = make_inputs(1, 2, 5, 3)
    assert scan_mod.resolve_backend(inputs["u"], inputs["A"], arg) == "torch"
    out = selective_scan(*inputs.values(), backend=arg)
    assert calls and torch.allclose(out, selective_scan_ref(*inputs.values()), atol=1e-5)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@needs_cuda
def test_cuda_without_mamba_ssm_uses_torch_backend(monkeypatch):
    monkeypatch.delenv("MDDOSE_SCAN_BACKEND", raising=False)
    monkeypatch.setattr(scan_mod, "_mamba_ssm_fn", lambda: None)
    inputs = {k: (None if v is None else v.cuda()) for k, v in make_inputs(1, 2, 5, 3).items()}
    assert scan_mod.resolve_backend(inputs["u"], inputs["A"]) == "torch"


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("size", [(2, 8, 131, 16, None), (1, 16, 1024, 16, 2)])
def test_torch_backend_on_cuda_matches_cpu_reference(size):
    inputs = make_inputs(*size)
    expected = _run(inputs, selective_scan_ref, True)
    on_gpu = {k: (None if v is None else v.cuda()) for k, v in inputs.items()}
    actual = {k: v.cpu() for k, v in _run(on_gpu, selective_scan_torch, True).items()}
    # TF32 is not involved (element-wise ops and sums only): float32 tolerances hold
    assert_close_scaled(actual, expected)
