"""Multi-direction scan (the bidirectional mixer's): CPU kernel and other backends against the flipped-copies
reference — outputs and gradients, reversed / strided / gated / grouped inputs, dtypes, thread counts."""

from __future__ import annotations

import pytest
import torch

from mddose.ops.scan_multi import selective_scan_multi, selective_scan_multi_ref
from tests.ops.test_scan import assert_close_scaled, require_kernel


def make_leaves(b=2, dk=4, seqlen=33, n=8, k=2, groups_per_dir=1, *, strided=True, use_d=True, use_z=True,
                use_bias=True, dtype=torch.float32, seed=0) -> dict:
    """Random leaf tensors; with ``strided`` B/C come from one (B, G, L, 3 + 2N) tensor ``x_dbl`` and z from a
    (B, L, 2 Dk) tensor ``xz`` (as the mixer makes them), see :func:`scan_args`."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    groups = k * groups_per_dir
    leaves = {"u": r(b, k * dk, seqlen), "delta": torch.rand(b, k * dk, seqlen, generator=g, dtype=dtype) * 0.5,
              "A": -(torch.rand(k * dk, n, generator=g, dtype=dtype) * 2 + 0.05),
              "D": r(k * dk) if use_d else None, "delta_bias": r(k * dk) * 0.2 if use_bias else None}
    if strided:
        leaves["x_dbl"] = r(b, groups, seqlen, 3 + 2 * n)
        leaves["xz"] = r(b, seqlen, 2 * dk) if use_z else None
    else:
        leaves.update(B=r(b, groups, seqlen, n), C=r(b, groups, seqlen, n), z=r(b, dk, seqlen) if use_z else None)
    return leaves


def scan_args(lv: dict) -> list:
    """Positional (u, delta, A, B, C, D, z, delta_bias) from the leaves (views for the strided form)."""
    if "x_dbl" in lv:
        n = lv["A"].shape[1]
        B, C = lv["x_dbl"][..., 3:3 + n], lv["x_dbl"][..., 3 + n:]
        z = None if lv["xz"] is None else lv["xz"][..., lv["xz"].shape[-1] // 2:].transpose(1, 2)
    else:
        B, C, z = lv["B"], lv["C"], lv["z"]
    return [lv["u"], lv["delta"], lv["A"], B, C, lv["D"], z, lv["delta_bias"]]


def run(leaves: dict, fn, reverse, softplus=True, **kw) -> dict:
    lv = {k: (None if v is None else v.clone().requires_grad_()) for k, v in leaves.items()}
    out = fn(*scan_args(lv), delta_softplus=softplus, reverse=reverse, **kw)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    (out * w.to(out.dtype)).sum().backward()
    res = {"out": out.detach()}
    res.update({f"d{k}": v.grad for k, v in lv.items() if v is not None})
    return res


REVERSE = {"bi": (False, True), "fwd": (False,), "rev": (True,), "four": (False, True, True, False)}
OPTIONS = {  # id → (use_d, use_z, use_bias, softplus)
    "all": (True, True, True, True), "plain": (False, False, False, False), "z": (False, True, False, False),
}


@pytest.mark.parametrize("strided", [True, False], ids=["strided", "dense"])
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("reverse", list(REVERSE.values()), ids=list(REVERSE))
@pytest.mark.parametrize("seqlen", [1, 33, 300])
def test_cpu_kernel_matches_reference(seqlen, reverse, opts, strided):
    require_kernel()
    use_d, use_z, use_bias, softplus = opts
    leaves = make_leaves(seqlen=seqlen, k=len(reverse), strided=strided, use_d=use_d, use_z=use_z, use_bias=use_bias)
    expected = run(leaves, selective_scan_multi_ref, reverse, softplus)
    actual = run(leaves, selective_scan_multi, reverse, softplus, backend="cpu")
    assert_close_scaled(actual, expected)


@pytest.mark.parametrize("chunk", [1, 7, 128])
def test_cpu_kernel_chunk_boundaries_and_groups(chunk):
    require_kernel()
    from mddose.ops.scan_cpu import selective_scan_multi_cpu

    leaves = make_leaves(seqlen=131, groups_per_dir=2, dk=6)
    expected = run(leaves, selective_scan_multi_ref, (False, True))
    actual = run(leaves, selective_scan_multi_cpu, (False, True), chunk=chunk)
    assert_close_scaled(actual, expected)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_count_does_not_change_results(threads):
    require_kernel()
    leaves = make_leaves(b=3, dk=16, seqlen=512, n=16)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(leaves, selective_scan_multi, (False, True), backend="cpu")
        torch.set_num_threads(threads)
        many = run(leaves, selective_scan_multi, (False, True), backend="cpu")
    finally:
        torch.set_num_threads(prev)
    for key in one:
        torch.testing.assert_close(many[key], one[key], rtol=1e-5, atol=1e-5 * float(one[key].abs().max()))


@pytest.mark.parametrize("backend", ["torch", "ref"])
def test_other_backends_match_reference(backend):
    leaves = make_leaves(seqlen=70)
    expected = run(leaves, selective_scan_multi_ref, (False, True))
    assert_close_scaled(run(leaves, selective_scan_multi, (False, True), backend=backend), expected)


def test_cpu_gradcheck_float64():
    require_kernel(torch.float64)
    leaves = make_leaves(b=1, dk=2, seqlen=9, n=3, dtype=torch.float64)
    names = [k for k, v in leaves.items() if v is not None]
    lv = {k: leaves[k].clone().requires_grad_() for k in names}

    def f(*vals):
        return selective_scan_multi(*scan_args(dict(zip(names, vals))), delta_softplus=True, backend="cpu")

    assert torch.autograd.gradcheck(f, tuple(lv[k] for k in names))


def test_bfloat16_inputs_compute_in_float32():
    require_kernel()
    leaves = {k: (None if v is None else v.to(torch.bfloat16)) for k, v in make_leaves(seqlen=40).items()}
    ref = selective_scan_multi_ref(*[None if t is None else t.float() for t in scan_args(leaves)],
                                   delta_softplus=True)
    out = selective_scan_multi(*scan_args(leaves), delta_softplus=True, backend="cpu")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.to(torch.bfloat16).float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("case", ["k_divides", "bc_groups", "z_shape", "D_shape"])
def test_bad_shapes_raise(case):
    lv = make_leaves(strided=False)
    args = scan_args(lv)
    reverse = (False, True)
    if case == "k_divides":
        reverse = (False, True, False)
    elif case == "bc_groups":
        args[3] = args[3][:, :1]
    elif case == "z_shape":
        args[6] = torch.zeros(2, 8, 33)
    else:
        args[5] = torch.zeros(3)
    with pytest.raises(ValueError, match="selective_scan_multi"):
        selective_scan_multi(*args, reverse=reverse)


def test_non_finite_input_raises():
    lv = make_leaves(strided=False)
    lv["u"][0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="u contains NaN"):
        selective_scan_multi(*scan_args(lv), backend="cpu")


@pytest.mark.parametrize("inference", [False, True])
def test_non_finite_outside_a_strided_view_is_ignored_and_inside_detected(inference):
    lv = make_leaves()
    lv["x_dbl"][0, 0, 0, 0] = float("nan")     # in the dt columns: not part of B or C
    with torch.inference_mode(inference):
        selective_scan_multi(*scan_args(lv), backend="cpu")
        lv["x_dbl"][0, 1, 2, 3 + 1] = float("inf")  # inside B
        with pytest.raises(ValueError, match="B contains NaN"):
            selective_scan_multi(*scan_args(lv), backend="cpu")


@pytest.mark.parametrize("n,dk,groups_per_dir", [(16, 40, 1), (32, 19, 1), (20, 24, 2)],
                         ids=["n16-3blocks", "n32-tail", "groups-split-blocks"])
def test_cpu_kernel_channel_blocks_and_lane_sums(n, dk, groups_per_dir):
    """The kernel works on blocks of 16 float channels (a block never straddles a B/C group) and sums dB/dC over a
    block's lanes 16 states at a time: several blocks with a partial last one, N a multiple of 16 and not."""
    require_kernel()
    leaves = make_leaves(dk=dk, n=n, seqlen=150, groups_per_dir=groups_per_dir)
    expected = run(leaves, selective_scan_multi_ref, (False, True))
    actual = run(leaves, selective_scan_multi, (False, True), backend="cpu")
    assert_close_scaled(actual, expected)
