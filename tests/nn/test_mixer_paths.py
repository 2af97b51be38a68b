"""The copy-free mixer path (``scan_directions``) against its flipped-copies twin: random mixers (outputs and
every parameter's gradient) and the shipped checkpoint's denoiser outputs."""

from __future__ import annotations

import pytest
import torch

from mddose.nn.mamba import MambaMixer, conv_silu, mixer_path
from mddose.nn.vim import BiMambaMixer

PATH_ENV = "MDDOSE_MIXER_PATH"


def _forward_backward(module, x, monkeypatch, path):
    monkeypatch.setenv(PATH_ENV, path)
    module.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_()
    out = module(xx)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach(), xx.grad, grads


@pytest.mark.parametrize("cls,kwargs", [(BiMambaMixer, {}), (MambaMixer, {}), (BiMambaMixer, {"bias": True}),
                                        (BiMambaMixer, {"d_conv": 2, "d_state": 4})])
@pytest.mark.parametrize("seqlen", [1, 37, 256])
def test_fast_mixer_matches_flipped_copies_twin(cls, kwargs, seqlen, monkeypatch):
    torch.manual_seed(0)
    mixer = cls(16, **kwargs)
    if kwargs.get("bias"):
        with torch.no_grad():
            mixer.in_proj.bias.normal_()
            mixer.out_proj.bias.normal_()
    x = torch.randn(2, seqlen, 16)
    out_f, dx_f, g_f = _forward_backward(mixer, x, monkeypatch, "fast")
    out_r, dx_r, g_r = _forward_backward(mixer, x, monkeypatch, "ref")
    scale = float(out_r.abs().max())
    torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=2e-5 * scale)
    torch.testing.assert_close(dx_f, dx_r, rtol=1e-4, atol=2e-5 * float(dx_r.abs().max()))
    assert g_f.keys() == g_r.keys()
    for name in g_r:
        torch.testing.assert_close(g_f[name], g_r[name], rtol=1e-4, atol=2e-5 * float(g_r[name].abs().max()),
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_reverse_conv_is_the_flipped_causal_conv():
    from mddose.nn.mamba import SSMBranch

    torch.manual_seed(0)
    br = SSMBranch(6, 4, d_conv=4)
    x = torch.randn(2, 6, 19)
    torch.testing.assert_close(conv_silu(br, x, reverse=True), conv_silu(br, x.flip(-1)).flip(-1))


def test_mixer_path_env(monkeypatch):
    monkeypatch.setenv(PATH_ENV, "")
    assert mixer_path() == "fast"
    monkeypatch.setenv(PATH_ENV, "REF")
    assert mixer_path() == "ref"
    monkeypatch.setenv(PATH_ENV, "slow")
    with pytest.raises(ValueError, match="MDDOSE_MIXER_PATH"):
        mixer_path()


def test_shipped_checkpoint_outputs_unchanged(monkeypatch):
    """openkbp-small's denoiser on a fixed random input: the fast path equals the flipped-copies twin to float32
    tolerance (the twin is the computation the checkpoint was trained with)."""
    from mddose.predict import shipped
    from mddose.train.checkpoint import load_checkpoint

    found = shipped.shipped_checkpoints()
    if "openkbp-small" not in found:
        pytest.skip("openkbp-small is not shipped in this checkout")
    bundle = load_checkpoint(found["openkbp-small"])
    model = bundle.model.eval()
    size, ch = bundle.inputs.size, bundle.inputs.channels
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 1, size, size, generator=g), torch.randn(2, ch, size, size, generator=g)
    t = torch.tensor([10, 700])
    outs = {}
    for path in ("fast", "ref"):
        monkeypatch.setenv(PATH_ENV, path)
        with torch.no_grad():
            outs[path] = model(x, t, c)
    scale = float(outs["ref"].abs().max())
    torch.testing.assert_close(outs["fast"], outs["ref"], rtol=1e-4, atol=2e-5 * scale)


@pytest.mark.parametrize("d_conv", [1, 2, 4])
@pytest.mark.parametrize("reverse", [(False,), (True,), (False, True)])
def test_shift_conv_equals_the_conv_layers(d_conv, reverse):
    from mddose.nn.mamba import SSMBranch, shift_conv_silu

    torch.manual_seed(0)
    branches = [SSMBranch(6, 4, d_conv=d_conv) for _ in reverse]
    base = torch.randn(2, 23, 12)
    x = base[..., :6].transpose(1, 2)                     # the mixer's channels-last view
    expected = torch.cat([conv_silu(br, x, rev) for br, rev in zip(branches, reverse)], 1)
    torch.testing.assert_close(shift_conv_silu(branches, x, reverse), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reverse", [(False,), (False, True)])
def test_shift_conv_gradcheck_float64(reverse):
    from mddose.nn.mamba import _ShiftConv

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(len(reverse), 3, 4, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(len(reverse), 3, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: _ShiftConv.apply(*a, reverse), (x, w, b))


@pytest.mark.parametrize("bias", [False, True])
def test_in_out_projections_equal_linear_and_gradcheck(bias):
    """The channels-first projections (batched products on transposed views) equal ``nn.Linear`` and its
    gradients, and pass gradcheck in float64."""
    from mddose.nn.mamba import _InProj, _OutProj, in_projection, out_projection

    torch.manual_seed(0)
    lin_in, lin_out = torch.nn.Linear(5, 8, bias=bias), torch.nn.Linear(3, 5, bias=bias)
    x = torch.randn(2, 7, 5, requires_grad=True)
    xs, z = in_projection(lin_in, x, 3)
    ref = lin_in(x).transpose(1, 2)
    assert xs.is_contiguous() and z.is_contiguous()
    torch.testing.assert_close(torch.cat([xs, z], 1), ref)
    y = torch.randn(2, 3, 7, requires_grad=True)
    out = out_projection(lin_out, y)
    assert out.is_contiguous()
    torch.testing.assert_close(out, lin_out(y.transpose(1, 2)))
    g = torch.Generator().manual_seed(1)
    x64 = torch.randn(2, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b64 = torch.randn(8, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    assert torch.autograd.gradcheck(lambda *a: _InProj.apply(*a, 3), (x64, w64, b64))
    y64 = torch.randn(2, 8, 6, generator=g, dtype=torch.float64, requires_grad=True)
    wo = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    bo = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    assert torch.autograd.gradcheck(_OutProj.apply, (y64, wo, bo))


def test_fast_mixer_runs_under_bf16_autocast():
    """Mixed precision: the projections' manual backward casts the bf16 gradients, parameters keep float32 grads."""
    torch.manual_seed(0)
    mixer = BiMambaMixer(16)
    x = torch.randn(2, 33, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixer(x)
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in mixer.parameters())


@pytest.mark.parametrize("layout", ["channels-last view", "contiguous"])
@pytest.mark.parametrize("grad", [True, False])
def test_shift_conv_layouts_and_no_grad(layout, grad):
    """The shift conv on the in-projection's contiguous channels-first output and on a channels-last view, with
    and without gradients recorded (it is the conv of both the training and the inference path)."""
    from mddose.nn.mamba import SSMBranch, shift_conv_silu

    torch.manual_seed(0)
    branches = [SSMBranch(6, 4, d_conv=4) for _ in range(2)]
    base = torch.randn(2, 23, 12)
    x = base[..., :6].transpose(1, 2) if layout != "contiguous" else base[..., :6].transpose(1, 2).contiguous()
    expected = torch.cat([conv_silu(br, x, rev) for br, rev in zip(branches, (False, True))], 1)
    with torch.set_grad_enabled(grad):
        actual = shift_conv_silu(branches, x, (False, True))
    torch.testing.assert_close(actual, expected.detach(), rtol=1e-5, atol=1e-6)
