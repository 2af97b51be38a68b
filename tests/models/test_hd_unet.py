"""HD-UNet, specific to its architecture: layer layout against the spec (growth 16, dense levels), init, input
checks. Counts, published size, learning and the registry entry: test_compared_methods.py."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from mddose.errors import MddoseError
from mddose.models import build_model, make_config
from mddose.nn.conv3d import ConvUnit3d, DenseDown3d, DenseUnit3d

def _meta(preset: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return build_model("hd-unet", preset=preset, in_channels=9, **kw)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("hd-unet", preset="tiny", in_channels=9)


# 2. layout against the spec (g = 16) ------------------------------------------------------------------------

def test_encoder_channels_per_level():
    model = _meta("paper")
    assert model.encoder_channels == (9 + 2 * 16, 9 + 5 * 16, 9 + 8 * 16, 9 + 11 * 16, 9 + 16 * 16)
    assert model.encoder_channels == (41, 89, 137, 185, 265)
    assert [level[-1].out_channels for level in model.encoder] == list(model.encoder_channels)


@pytest.mark.parametrize("level, blocks", [(0, ["unit", "unit"]), (1, ["down", "unit", "unit"]),
                                           (2, ["down", "unit", "unit"]), (3, ["down", "unit", "unit"]),
                                           (4, ["down", "unit", "unit", "unit", "unit"])])
def test_encoder_blocks_per_level(level, blocks):
    seq = _meta("paper").encoder[level]
    kinds = {DenseUnit3d: "unit", DenseDown3d: "down"}
    assert [kinds[type(b)] for b in seq] == blocks
    # every dense block adds g = 16 channels from a 3x3x3 conv (stride 2 in the downsampling block)
    assert all(b.unit.conv.out_channels == 16 and b.unit.conv.kernel_size == (3, 3, 3) for b in seq)
    assert all(b.unit.conv.stride == ((2, 2, 2) if isinstance(b, DenseDown3d) else (1, 1, 1)) for b in seq)
    assert all(isinstance(b.pool, nn.MaxPool3d) for b in seq if isinstance(b, DenseDown3d))


@pytest.mark.parametrize("k, skip, width", [(0, 185, 256), (1, 137, 128), (2, 89, 64), (3, 41, 32)])
def test_decoder_level(k, skip, width):
    model = _meta("paper")
    prev = 265 if k == 0 else (256, 128, 64)[k - 1]
    assert (model.up[k].unit.conv.in_channels, model.up[k].unit.conv.out_channels) == (prev, 64)
    units = list(model.decoder[k])
    assert all(isinstance(u, ConvUnit3d) for u in units)
    assert [(u.in_channels, u.out_channels) for u in units] == [(64 + skip, width), (width, width)]


def test_head_is_1x1x1_32_to_1():
    head = _meta("paper").head
    assert tuple(head.weight.shape) == (1, 32, 1, 1, 1) and head.bias is not None


def test_kaiming_uniform_init_zero_bias():
    torch.manual_seed(0)
    conv = build_model("hd-unet", preset="tiny").encoder[1][0].unit.conv
    bound = (6.0 / (conv.in_channels * 27)) ** 0.5          # kaiming_uniform, fan_in, ReLU gain
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.8 * bound
    assert torch.count_nonzero(conv.bias) == 0


# 3. shapes, finiteness, gradients ---------------------------------------------------------------------------


def test_forward_equals_training_output(tiny):
    cond = torch.randn(1, 9, 8, 16, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = tiny(cond)
        torch.testing.assert_close(out, tiny.training_outputs(cond)[0][1])
    assert out.shape == (1, 1, 8, 16, 12)


# 5. bad inputs and configs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, match", [((1, 9, 16, 16, 10), "divisible by 4"),
                                          ((1, 9, 6, 16, 16), "divisible by 4"),
                                          ((1, 10, 16, 16, 16), "C=9"),
                                          ((1, 9, 4, 4, 4), "single voxel"),
                                          ((9, 16, 16, 16), r"\(B, C, D, H, W\)")])
def test_bad_shapes(tiny, shape, match):
    with pytest.raises(ValueError, match=f"hd-unet.*{match}"):
        tiny(torch.zeros(shape))


def test_paper_preset_needs_multiples_of_16():
    model = _meta("paper")
    with pytest.raises(ValueError, match=r"hd-unet.*divisible by 16.*\(1, 9, 24, 32, 32\)"):
        model(torch.zeros(1, 9, 24, 32, 32, device="meta"))


@pytest.mark.parametrize("bad", [{"growth": 0}, {"levels": 1}, {"decoder_widths": (8,)},
                                 {"decoder_widths": (8, -8)}, {"decoder_widths": "88"}, {"up_channels": 4.0},
                                 {"bottleneck_units": -1}, {"in_channels": False}, {"grid_size": 6},
                                 {"grid_size": 4}, {"bogus": 1}])
def test_bad_config_values(bad):
    with pytest.raises(MddoseError):
        make_config("hd-unet", "tiny", **bad)
