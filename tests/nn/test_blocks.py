"""Mamba mixer, bidirectional Vim block, SS2D cross-scan and embeddings: shapes, gradients, init, direction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mddose.nn import (
    SS2D, BiMambaBlock, BiMambaMixer, GaussianFourierFeatures, MambaLayer2d, MambaMixer, PatchEmbed2d,
    PixelShuffleUpsample, SS2DBlock, TimestepEmbedding,
)
from mddose.nn.mamba import SSMBranch, scan_branches
from mddose.nn.ss2d import cross_merge, cross_scan
from mddose.ops import selective_scan_ref

DIM, H, W = 8, 5, 6


def _assert_all_grads(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def _token_input(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, H * W, DIM, generator=g)


@pytest.mark.parametrize("kind", ["mixer", "bimixer", "biblock", "oneway_block", "ss2d_block"])
def test_token_blocks_shape_finite_and_gradients(kind):
    torch.manual_seed(0)
    module = {"mixer": lambda: MambaMixer(DIM, d_state=4), "bimixer": lambda: BiMambaMixer(DIM, d_state=4),
              "biblock": lambda: BiMambaBlock(DIM, d_state=4),
              "oneway_block": lambda: BiMambaBlock(DIM, bidirectional=False, d_state=4),
              "ss2d_block": lambda: SS2DBlock(DIM, d_state=4)}[kind]()
    x = _token_input().requires_grad_(True)
    y = module(x, (H, W)) if kind.endswith("block") else module(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    _assert_all_grads(module)
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("scan", ["bi", "cross"])
@pytest.mark.parametrize("depth", [0, 2])
def test_layer2d_shape_and_gradients(scan, depth):
    torch.manual_seed(0)
    layer = MambaLayer2d(DIM, depth, scan=scan, d_state=4)
    x = torch.randn(2, DIM, H, W, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    if depth == 0:
        assert torch.equal(y, x)
        assert len(list(layer.parameters())) == 0
        return
    y.square().sum().backward()
    _assert_all_grads(layer)


def _grad_of_first_token(module, x, *args):
    """d out[:, 0] / d x, per token: (L,) gradient magnitudes."""
    x = x.clone().requires_grad_(True)
    out = module(x, *args)
    out[:, 0].sum().backward()
    return x.grad.abs().sum(dim=(0, 2))


def test_one_way_mixer_is_causal_and_bidirectional_block_is_not():
    torch.manual_seed(0)
    x = _token_input(1)
    g_causal = _grad_of_first_token(MambaMixer(DIM, d_state=4), x)
    assert g_causal[0] > 0
    assert torch.all(g_causal[1:] == 0), "a one-way mixer's first token must not see later tokens"
    g_oneway_block = _grad_of_first_token(BiMambaBlock(DIM, bidirectional=False, d_state=4), x)
    assert torch.all(g_oneway_block[1:] == 0)
    g_bi = _grad_of_first_token(BiMambaBlock(DIM, d_state=4), x)
    assert torch.all(g_bi[1:] > 0), "the bidirectional block's first token must depend on every later token"


def test_ss2d_first_token_sees_whole_map():
    torch.manual_seed(0)
    g = _grad_of_first_token(SS2DBlock(DIM, d_state=4), _token_input(2), (H, W))
    assert torch.all(g > 0)


@pytest.mark.parametrize("d_model,d_state,dt_min,dt_max", [(8, 4, 0.001, 0.1), (40, 16, 0.01, 0.05)])
def test_mixer_initialisation(d_model, d_state, dt_min, dt_max):
    torch.manual_seed(0)
    m = MambaMixer(d_model, d_state=d_state, expand=2, dt_min=dt_min, dt_max=dt_max)
    d_inner = 2 * d_model
    assert m.dt_proj.in_features == math.ceil(d_model / 16)
    A = -torch.exp(m.A_log)
    expected = -torch.arange(1, d_state + 1, dtype=torch.float32).expand(d_inner, d_state)
    torch.testing.assert_close(A, expected)
    assert torch.equal(m.D, torch.ones(d_inner))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.shape == (d_inner,)
    assert (dt >= dt_min * (1 - 1e-4)).all() and (dt <= dt_max * (1 + 1e-4)).all()
    bound = m.dt_proj.in_features ** -0.5
    assert m.dt_proj.weight.abs().max() <= bound + 1e-7
    assert m.dt_proj.weight.std() > bound / 4  # uniform ±bound, not zero / tiny


def test_dt_floor_applies():
    torch.manual_seed(0)
    branch = SSMBranch(64, d_state=4, dt_rank=2, dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-3)
    torch.testing.assert_close(F.softplus(branch.dt_proj.bias), torch.full((64,), 1e-3), rtol=1e-3, atol=0)


def test_scan_branches_matches_separate_scans():
    """Stacking directions along channels (grouped B/C) must equal one scan per direction."""
    torch.manual_seed(0)
    branches = [SSMBranch(6, d_state=3, d_conv=4, dt_rank=2) for _ in range(3)]
    xs = [torch.randn(2, 6, 11) for _ in branches]
    zs = [torch.randn(2, 6, 11) for _ in branches]
    parts = [b.prepare(x) for b, x in zip(branches, xs)]
    got = scan_branches(parts, zs)
    for p, z, y in zip(parts, zs, got):
        ref = selective_scan_ref(p.u, p.delta, p.A, p.B, p.C, p.D, z=z, delta_bias=p.delta_bias,
                                 delta_softplus=True)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_cross_scan_merge_roundtrip():
    x = torch.randn(2, 3, H * W)
    seqs = cross_scan(x, H, W)
    assert all(s.shape == x.shape for s in seqs)
    # column-major order: token k of the second sequence is pixel (k % H, k // H)
    img = x.reshape(2, 3, H, W)
    assert torch.equal(seqs[1][:, :, 1], img[:, :, 1, 0])
    torch.testing.assert_close(cross_merge(seqs, H, W), 4 * x)


def test_ss2d_rejects_wrong_hw():
    with pytest.raises(ValueError, match="hw"):
        SS2D(DIM, d_state=4)(_token_input(), (H + 1, W))


def test_patch_embed_and_upsample_shapes():
    x = torch.randn(2, 5, 16, 12)
    y = PatchEmbed2d(5, 7, stride=2)(x)
    assert y.shape == (2, 7, 8, 6)
    # channel LayerNorm: every pixel's channels have ~zero mean
    assert y.mean(dim=1).abs().max() < 1e-5
    assert PixelShuffleUpsample(7, 3)(y).shape == (2, 3, 16, 12)


def test_timestep_embedding():
    torch.manual_seed(0)
    emb = TimestepEmbedding(16, (4, 8, 12), scale=30.0)
    assert [n for n, _ in emb.named_parameters() if "W" in n] == []  # Fourier frequencies are fixed
    assert emb.features.W.std() > 10  # scale 30
    out = emb(torch.tensor([0, 10, 999]))
    assert [o.shape for o in out] == [(3, 4), (3, 8), (3, 12)]
    assert not torch.allclose(out[0][0], out[0][1])
    feats = GaussianFourierFeatures(16)(torch.tensor([0.0, 0.5]))
    torch.testing.assert_close(feats.square().reshape(2, 2, 8).sum(1), torch.ones(2, 8))  # sin² + cos² = 1
