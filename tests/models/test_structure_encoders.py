"""MD-Dose structure-encoder ablation (Table 3): none / Conv-SE / Trans-SE / Mamba-SE."""

from __future__ import annotations

import pytest
import torch

from mddose.errors import MddoseError
from mddose.models import build_model, make_config
from mddose.models.md_dose import STRUCTURE_ENCODERS
from mddose.nn import MambaLayer2d, ResBlock2d, SwinLayer2d

ENCODERS = ["none", "mamba", "conv", "transformer"]


def _count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 1, 32, 32, generator=g), torch.tensor([10, 500][:batch]),
            torch.randn(batch, 9, 32, 32, generator=g))


def test_all_four_are_registered_choices():
    assert sorted(STRUCTURE_ENCODERS) == sorted(ENCODERS)


@pytest.mark.parametrize("encoder,total,structure", [("mamba", 28_176_961, 11_030_208),
                                                     ("none", 17_148_697, 0),
                                                     ("conv", 43_950_145, 26_803_392),
                                                     ("transformer", 35_263_225, 18_116_472)])
def test_paper_parameter_counts(encoder, total, structure):
    with torch.device("meta"):
        model = build_model("md-dose", preset="paper", in_channels=9, structure_encoder=encoder)
    assert (_count(model), _count(model.structure)) == (total, structure)


@pytest.mark.parametrize("encoder", ["conv", "transformer"])
def test_same_layout_as_the_mamba_encoder_outside_the_blocks(encoder):
    """Only the per-level blocks differ: head, patch embeddings and the noise branch are the mamba ones."""
    with torch.device("meta"):
        mamba = build_model("md-dose", preset="paper", structure_encoder="mamba")
        other = build_model("md-dose", preset="paper", structure_encoder=encoder)
    assert _count(other) - _count(other.structure.layers) == _count(mamba) - _count(mamba.structure.layers)
    block = {"conv": ResBlock2d, "transformer": SwinLayer2d}[encoder]
    for level, depth in zip(other.structure.layers, other.config.enc_depths):
        assert sum(isinstance(m, block) for m in level.modules()) == (depth if encoder == "conv" else 1)
        assert not any(isinstance(m, MambaLayer2d) for m in level.modules())


def test_trans_se_uses_swin_t_heads():
    with torch.device("meta"):
        model = build_model("md-dose", preset="paper", structure_encoder="transformer")
    heads = [level[0].blocks[0].attn.heads for level in model.structure.layers]
    windows = [level[0].blocks[1].shift for level in model.structure.layers]
    assert heads == [3, 6, 12, 24] and windows == [4, 4, 4, 4]


@pytest.mark.parametrize("encoder", ENCODERS)
def test_tiny_shape_finite_and_all_gradients(encoder):
    torch.manual_seed(0)
    model = build_model("md-dose", preset="tiny", structure_encoder=encoder)
    x, t, c = _inputs()
    out = model(x, t, c)
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("encoder", ENCODERS)
def test_structure_changes_the_output(encoder):
    torch.manual_seed(0)
    model = build_model("md-dose", preset="tiny", structure_encoder=encoder).eval()
    x, t, c = _inputs()
    c2 = c.clone()
    c2[:, 1] = 0.0
    with torch.no_grad():
        assert (model(x, t, c) - model(x, t, c2)).abs().max() > 1e-4




@pytest.mark.parametrize("encoder,size", [("conv", 128), ("conv", 256), ("transformer", 128), ("transformer", 256)])
def test_small_preset_runs_at_training_sizes(encoder, size):
    torch.manual_seed(0)
    model = build_model("md-dose", preset="small", structure_encoder=encoder).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = model(torch.randn(1, 1, size, size, generator=g), torch.tensor([5]),
                    torch.randn(1, 9, size, size, generator=g))
    assert out.shape == (1, 1, size, size) and torch.isfinite(out).all()


def test_unknown_structure_encoder_names_the_choices():
    with pytest.raises(MddoseError, match="structure_encoder must be one of mamba, none, conv, transformer"):
        make_config("md-dose", "tiny", structure_encoder="foo")


@pytest.mark.parametrize("bad", [{"se_window": 0}, {"se_head_dim": 0}, {"se_window": 4.5},
                                 {"structure_encoder": "transformer", "dims": (8, 16, 24, 56)}])
def test_invalid_structure_encoder_settings(bad):
    with pytest.raises(MddoseError, match="md-dose config"):
        make_config("md-dose", "tiny", **bad)


def test_head_dim_only_checked_for_the_transformer():
    assert make_config("md-dose", "tiny", dims=(8, 16, 24, 56)).structure_encoder == "mamba"
