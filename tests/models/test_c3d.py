"""C3D, specific to its architecture: the A/B parameter split, layer layout against the spec, cascade wiring,
init, input checks. Counts, published size, learning and the registry entry: test_compared_methods.py."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from mddose.errors import MddoseError
from mddose.models import build_model, make_config

def _meta(preset: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return build_model("c3d", preset=preset, in_channels=9, **kw)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _convs(module: nn.Module) -> list[nn.Conv3d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv3d)]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("c3d", preset="tiny", in_channels=9)


def test_paper_count_splits_as_the_spec():
    model = _meta("paper")
    # the spec's split: A ≈ 6.47 M (U-Net A + head A), B ≈ 25.88 M (U-Net B + head B); exact counts here
    assert _count(model.net_a) + _count(model.head_a) == 6_471_713
    assert _count(model.net_b) + _count(model.head_b) == 25_882_689
    assert _count(model) == 6_471_713 + 25_882_689


# 2. layout against the spec ---------------------------------------------------------------------------------

@pytest.mark.parametrize("net, in_ch, widths", [("net_a", 9, (16, 32, 64, 128, 256)),
                                                ("net_b", 25, (32, 64, 128, 256, 512))])
def test_encoder_layout(net, in_ch, widths):
    unet = getattr(_meta("paper"), net)
    convs = [_convs(level) for level in unet.encoder]
    assert convs[0][0].in_channels == in_ch
    assert [[c.out_channels for c in level] for level in convs] == [[w, w] for w in widths]
    assert [[c.stride[0] for c in level] for level in convs] == [[1, 1]] + [[2, 1]] * 4
    assert all(c.kernel_size == (3, 3, 3) and c.bias is not None for level in convs for c in level)
    norms = [m for m in unet.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and all(m.affine for m in norms)
    assert not any(isinstance(m, (nn.MaxPool3d, nn.AvgPool3d)) for m in unet.modules())


@pytest.mark.parametrize("net, widths", [("net_a", (16, 32, 64, 128, 256)), ("net_b", (32, 64, 128, 256, 512))])
def test_decoder_layout(net, widths):
    unet = getattr(_meta("paper"), net)
    # up[l-1]: trilinear x2 then a unit from w_{l+1} to w_l; decoder[l-1]: 2 w_l -> w_l, two units (one at level 1)
    assert [(u.unit.conv.in_channels, u.unit.conv.out_channels) for u in unet.up] == \
        [(widths[i + 1], widths[i]) for i in range(4)]
    assert [[(c.in_channels, c.out_channels) for c in _convs(d)] for d in unet.decoder] == \
        [[(2 * widths[0], widths[0])]] + [[(2 * w, w), (w, w)] for w in widths[1:4]]


@pytest.mark.parametrize("head, shape", [("head_a", (1, 16, 1, 1, 1)), ("head_b", (1, 32, 1, 1, 1))])
def test_heads_are_1x1x1(head, shape):
    conv = getattr(_meta("paper"), head)
    assert tuple(conv.weight.shape) == shape and conv.bias is not None


def test_b_sees_a_features_and_inputs():
    model = _meta("paper")
    assert model.net_b.encoder[0][0].conv.in_channels == 16 + 9 == 25


def test_kaiming_uniform_init_zero_bias():
    torch.manual_seed(0)
    conv = build_model("c3d", preset="tiny").net_a.encoder[1][0].conv
    bound = (6.0 / (conv.in_channels * 27)) ** 0.5          # kaiming_uniform, fan_in, ReLU gain
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.8 * bound
    assert torch.count_nonzero(conv.bias) == 0


# 3. shapes, finiteness, gradients ---------------------------------------------------------------------------


def test_forward_is_b_without_head_a(tiny):
    calls = []
    hook = tiny.head_a.register_forward_hook(lambda *a: calls.append(1))
    try:
        cond = torch.randn(1, 9, 16, 16, 32, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = tiny(cond)
            assert calls == []
            out_b = tiny.training_outputs(cond)[1][1]
    finally:
        hook.remove()
    assert out.shape == (1, 1, 16, 16, 32)
    torch.testing.assert_close(out, out_b)


def test_b_uses_cond_directly(tiny):
    # the inputs reach U-Net B through the concatenation, not only through A's features
    cond = torch.randn(1, 9, 16, 16, 16, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    f_a = tiny.net_a(cond).detach()
    tiny.net_b(torch.cat([f_a, cond], 1)).sum().backward()
    assert cond.grad.abs().sum() > 0


# 5. bad inputs and configs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, match", [((1, 9, 16, 16, 12), "divisible by 8"),
                                          ((1, 9, 20, 16, 16), "divisible by 8"),
                                          ((1, 4, 16, 16, 16), "C=9"),
                                          ((1, 9, 8, 8, 8), "single voxel"),
                                          ((9, 16, 16, 16), r"\(B, C, D, H, W\)")])
def test_bad_shapes(tiny, shape, match):
    with pytest.raises(ValueError, match=f"c3d.*{match}"):
        tiny(torch.zeros(shape))


def test_bad_shape_message_names_the_shape(tiny):
    with pytest.raises(ValueError, match=r"\(1, 9, 16, 16, 12\)"):
        tiny.training_outputs(torch.zeros(1, 9, 16, 16, 12))


@pytest.mark.parametrize("bad", [{"widths_a": (16, 32)}, {"widths_b": (4, 0, 8, 8)}, {"widths_a": ()},
                                 {"widths_a": (2, "4", 8, 8)}, {"in_channels": 0}, {"in_channels": 9.0},
                                 {"out_channels": True}, {"grid_size": 12}, {"grid_size": 8}, {"bogus": 1}])
def test_bad_config_values(bad):
    with pytest.raises(MddoseError):
        make_config("c3d", "tiny", **bad)
