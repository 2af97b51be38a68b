"""Conv U-Net blocks and Swin blocks: shapes, gradients, and that shifted windows really are masked."""

from __future__ import annotations

import pytest
import torch

import mddose.nn.swin as swin
from mddose.nn import Downsample2d, ResBlock2d, SelfAttention2d, SwinBlock2d, SwinLayer2d, Upsample2d
from mddose.nn.swin import window_attention_mask, window_partition, window_reverse
from mddose.nn.unet2d import group_norm


def _assert_all_grads(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def _x(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- conv blocks


@pytest.mark.parametrize("in_ch,out_ch,temb_dim", [(8, 8, 16), (8, 16, 16), (16, 8, None), (12, 12, None)])
def test_resblock_shape_and_gradients(in_ch, out_ch, temb_dim):
    torch.manual_seed(0)
    block = ResBlock2d(in_ch, out_ch, temb_dim)
    temb = _x(2, temb_dim, seed=1) if temb_dim else None
    out = block(_x(2, in_ch, 6, 10), temb)
    assert out.shape == (2, out_ch, 6, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    _assert_all_grads(block)
    assert isinstance(block.skip, torch.nn.Conv2d) == (in_ch != out_ch)


def test_resblock_uses_the_time_embedding():
    torch.manual_seed(0)
    block = ResBlock2d(8, 8, 16).eval()
    x = _x(1, 8, 4, 4)
    with torch.no_grad():
        assert not torch.allclose(block(x, _x(1, 16, seed=1)), block(x, _x(1, 16, seed=2)))
    with pytest.raises(ValueError, match="temb is None"):
        block(x)


@pytest.mark.parametrize("channels,groups", [(128, 32), (256, 32), (64, 16), (96, 24), (48, 12), (8, 2), (12, 3),
                                             (3, 1), (7, 1)])
def test_group_norm_groups_divide_any_width(channels, groups):
    assert group_norm(channels).num_groups == groups


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_self_attention_is_global_and_residual(heads):
    torch.manual_seed(0)
    attn = SelfAttention2d(8, heads).eval()
    x = _x(1, 8, 6, 5)
    x2 = x.clone()
    x2[0, :, 0, 0] += 3.0 * _x(8, seed=4)
    with torch.no_grad():
        a, b = attn(x), attn(x2)
    assert a.shape == x.shape
    changed = (a - b).abs().amax(1)[0] > 1e-6
    assert changed.all(), "one pixel must influence every pixel through global attention"


def test_self_attention_bad_heads():
    with pytest.raises(ValueError, match="divisible by heads"):
        SelfAttention2d(10, 4)


@pytest.mark.parametrize("module,shape", [(Downsample2d(8), (2, 8, 4, 6)), (Downsample2d(8, 16), (2, 16, 4, 6)),
                                          (Upsample2d(8), (2, 8, 16, 24)), (Upsample2d(8, 4), (2, 4, 16, 24))])
def test_resampling_shapes(module, shape):
    assert module(_x(2, 8, 8, 12)).shape == shape


# ---------------------------------------------------------------- Swin


def test_window_partition_roundtrip():
    x = _x(2, 8, 12, 3)
    win = window_partition(x, 4)
    assert win.shape == (2, 6, 16, 3)
    torch.testing.assert_close(win[0, 1].reshape(4, 4, 3), x[0, 0:4, 4:8])   # row-major windows
    torch.testing.assert_close(window_reverse(win, 4, 8, 12), x)


@pytest.mark.parametrize("hw", [(16, 16), (8, 12), (12, 8), (10, 6), (3, 5), (16, 9)])
def test_swin_layer_shape_and_gradients(hw):
    torch.manual_seed(0)
    layer = SwinLayer2d(8, depth=2, heads=2, window=4)
    x = _x(2, 8, *hw).requires_grad_(True)
    out = layer(x)
    assert out.shape == (2, 8, *hw) and torch.isfinite(out).all()
    out.square().mean().backward()
    _assert_all_grads(layer)
    assert torch.isfinite(x.grad).all()


def test_swin_layer_alternates_shifts():
    layer = SwinLayer2d(8, depth=3, heads=2, window=4)
    assert [b.shift for b in layer.blocks] == [0, 2, 0]
    assert len(SwinLayer2d(8, depth=0, heads=2).blocks) == 0


def _changed(block: SwinBlock2d, h: int, w: int, pixel: tuple[int, int]) -> set[tuple[int, int]]:
    """Output pixels of one block that change when input ``pixel`` is perturbed."""
    x = _x(1, block.dim, h, w, seed=3)
    x2 = x.clone()
    x2[0, :, pixel[0], pixel[1]] += 3.0 * _x(block.dim, seed=4)      # not constant: LayerNorm would cancel it
    with torch.no_grad():
        diff = (block(x2) - block(x)).abs().amax(1)[0]
    return {tuple(p) for p in (diff > 1e-6).nonzero().tolist()}


def _box(rows, cols) -> set[tuple[int, int]]:
    return {(r, c) for r in rows for c in cols}


@pytest.mark.parametrize("h,w,shift,pixel,rows,cols", [
    (16, 16, 0, (0, 0), range(0, 4), range(0, 4)),        # regular window
    (16, 16, 2, (2, 2), range(2, 6), range(2, 6)),        # interior shifted window
    (16, 16, 2, (0, 0), range(0, 2), range(0, 2)),        # wrapped corner: may not see rows/cols 14-15
    (16, 16, 2, (15, 15), range(14, 16), range(14, 16)),  # ... and vice versa
    (16, 16, 2, (0, 7), range(0, 2), range(6, 10)),       # wrapped along H only
    (8, 12, 2, (0, 11), range(0, 2), range(10, 12)),      # H != W
    (8, 12, 2, (7, 0), range(6, 8), range(0, 2)),
    (10, 6, 2, (0, 0), range(0, 2), range(0, 2)),         # padded (10x6 -> 12x8) and shifted
    (10, 6, 0, (9, 5), range(8, 10), range(4, 6)),        # padded, regular window cut by the border
])
def test_swin_block_receptive_field_is_its_window(h, w, shift, pixel, rows, cols):
    torch.manual_seed(0)
    block = SwinBlock2d(8, heads=2, window=4, shift=shift).eval()
    assert _changed(block, h, w, pixel) == _box(rows, cols)


def test_without_the_mask_the_cyclic_shift_would_leak(monkeypatch):
    """Control for the test above: with the mask removed, the corner pixel reaches the opposite corner."""
    torch.manual_seed(0)
    block = SwinBlock2d(8, heads=2, window=4, shift=2).eval()
    monkeypatch.setattr(swin, "window_attention_mask", lambda *args, **kwargs: None)
    changed = _changed(block, 16, 16, (0, 0))
    assert (15, 15) in changed and (14, 0) in changed


def test_attention_mask_blocks_padding_and_keeps_every_row_finite():
    mask = window_attention_mask(8, 8, 6, 7, window=4, shift_h=2, shift_w=2)
    assert mask.shape == (4, 16, 16)
    assert (mask == 0).any(-1).all(), "every query must keep at least one key"
    assert window_attention_mask(8, 8, 8, 8, 4, 0, 0) is None
    # no shift, padded: in the bottom-right window the real pixels (rows 4-5, cols 4-6) never see padding
    m = window_attention_mask(8, 8, 6, 7, window=4, shift_h=0, shift_w=0)[3].view(4, 4, 4, 4)
    assert torch.isinf(m[:2, :3, 2:, :]).all() and torch.isinf(m[:2, :3, :, 3]).all()
    assert (m[:2, :3, :2, :3] == 0).all()


def test_single_window_side_is_not_shifted():
    """A 4x4 map in an 8x8 window: one window, so shifted and regular blocks give the same output."""
    torch.manual_seed(0)
    regular = SwinBlock2d(8, heads=2, window=8, shift=0).eval()
    shifted = SwinBlock2d(8, heads=2, window=8, shift=4).eval()
    shifted.load_state_dict(regular.state_dict())
    x = _x(1, 8, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(shifted(x), regular(x))


@pytest.mark.parametrize("kwargs,match", [({"dim": 10, "heads": 4}, "divisible by heads"),
                                          ({"shift": 4}, "shift < window"), ({"window": 0}, "window >= 1")])
def test_swin_block_bad_arguments(kwargs, match):
    args = {"dim": 8, "heads": 2, "window": 4, "shift": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        SwinBlock2d(**args)


def test_swin_block_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"expected \(B, 8, H, W\)"):
        SwinBlock2d(8, 2, 4)(_x(1, 6, 8, 8))


def test_window_attention_matches_a_reference_with_relative_bias():
    """softmax(q·kᵀ/√d + B[Δy, Δx] + mask) v, written out by hand, with B indexed by the relative offset."""
    torch.manual_seed(0)
    window, heads, dim = 3, 2, 8
    attn = swin.WindowAttention(dim, heads, window)
    with torch.no_grad():
        attn.bias_table.normal_()
    x = _x(2, 4, window * window, dim)
    mask = window_attention_mask(6, 6, 6, 6, window, 1, 1)
    q, k, v = attn.qkv(x).view(2, 4, 9, 3, heads, dim // heads).permute(3, 0, 1, 4, 2, 5)
    pos = [(i // window, i % window) for i in range(window * window)]
    bias = torch.stack([torch.stack([attn.bias_table[(py - ky + window - 1) * (2 * window - 1) + px - kx + window - 1]
                                     for (ky, kx) in pos]) for (py, px) in pos]).permute(2, 0, 1)   # (heads, N, N)
    logits = q @ k.transpose(-1, -2) / (dim // heads) ** 0.5 + bias + mask[:, None]
    ref = attn.proj((logits.softmax(-1) @ v).transpose(2, 3).reshape(2, 4, 9, dim))
    torch.testing.assert_close(attn(x, mask), ref, rtol=1e-5, atol=1e-5)
