"""SP-DiffDose (our reconstruction): parameter counts, shapes, gradients, overfitting, input and config checks."""

from __future__ import annotations

import pytest
import torch

from mddose.errors import MddoseError
from mddose.models import build_model, build_model_from_dict, make_config, model_info
from mddose.models.sp_diffdose import SPDiffDose, SPDiffDoseConfig
from mddose.nn import SwinLayer2d

NAME = "sp-diffdose"
PAPER_PARAMETERS = 84.11e6  # MD-Dose paper, Table 2


def _count(**kw) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(NAME, **kw).parameters())


def _inputs(batch: int = 2, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 1, size, size, generator=g), torch.tensor([10, 500][:batch]),
            torch.randn(batch, 9, size, size, generator=g))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(NAME, preset="tiny").eval()


@pytest.mark.parametrize("preset,expected", [("paper", 86_436_649), ("small", 2_571_207), ("tiny", 61_671)])
def test_exact_parameter_counts(preset, expected):
    assert _count(preset=preset, in_channels=9) == expected


def test_paper_size_close_to_reported():
    n = _count(preset="paper")
    assert abs(n - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.15, f"{n:,} parameters vs 84.11 M"


def test_small_fits_on_a_cpu():
    assert _count(preset="small") <= 3_000_000


def test_registry_entry_is_a_reconstruction():
    info = model_info(NAME)
    assert (info.kind, info.dims, info.fidelity) == ("diffusion", 2, "reconstruction")
    assert "not published" in info.source and "2312.06187" in info.source


def test_tiny_shape_finite_and_all_gradients():
    torch.manual_seed(0)
    model = build_model(NAME, preset="tiny")
    x, t, c = _inputs()
    out = model(x, t, c)
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_overfits_one_example():
    torch.manual_seed(0)
    model = build_model(NAME, preset="tiny")
    x, t, c = _inputs(batch=1, seed=1)
    target = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = (model(x, t, c) - target).square().mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = (model(x, t, c) - target).square().mean().item()
    assert last * 10 <= first, f"MSE {first:.4f} -> {last:.4f}"


@pytest.mark.parametrize("preset,size", [("paper", 128), ("paper", 256), ("small", 128), ("small", 256)])
def test_paper_and_small_sizes_on_meta(preset, size):
    with torch.device("meta"):
        model = build_model(NAME, preset=preset)
        out = model(torch.zeros(1, 1, size, size), torch.tensor([5]), torch.zeros(1, 9, size, size))
    assert out.shape == (1, 1, size, size)


@pytest.mark.parametrize("size", [128, 256])
def test_small_runs_on_cpu(size):
    torch.manual_seed(0)
    model = build_model(NAME, preset="small").eval()
    x, _, c = _inputs(batch=1, size=size)
    with torch.no_grad():
        out = model(x, torch.tensor([7]), c)
    assert out.shape == (1, 1, size, size) and torch.isfinite(out).all()


@pytest.mark.parametrize("t", [torch.tensor(3), torch.tensor([3.0, 800.0]), 42])
def test_timestep_forms(tiny, t):
    x, _, c = _inputs()
    with torch.no_grad():
        assert tiny(x, t, c).shape == (2, 1, 32, 32)


def test_timestep_and_structure_change_the_output(tiny):
    x, t, c = _inputs()
    c2 = c.clone()
    c2[:, 1] = 0.0
    with torch.no_grad():
        a, b, d = tiny(x, t, c), tiny(x, t + 300, c), tiny(x, t, c2)
    assert (a - b).abs().max() > 1e-4 and (a - d).abs().max() > 1e-4


@pytest.mark.parametrize("x_shape,c_shape,t,match", [
    ((2, 2, 32, 32), (2, 9, 32, 32), [1, 2], "x_t must be"),
    ((2, 1, 30, 32), (2, 9, 30, 32), [1, 2], "divisible by 4"),
    ((2, 1, 32, 32), (2, 4, 32, 32), [1, 2], "cond must be"),
    ((2, 1, 32, 32), (2, 9, 32, 32), [1, 2, 3], "t must be"),
])
def test_input_validation(tiny, x_shape, c_shape, t, match):
    with pytest.raises(ValueError, match=match):
        tiny(torch.zeros(x_shape), torch.tensor(t), torch.zeros(c_shape))


@pytest.mark.parametrize("bad", [{"channels": 0}, {"channel_mults": ()}, {"channel_mults": (1, 0)},
                                 {"channel_mults": ("1", 2)}, {"swin_levels": 0}, {"swin_levels": 4},
                                 {"channels": 14, "head_dim": 5}, {"window": 0}, {"mid_depth": -1},
                                 {"num_res_blocks": 0}, {"in_channels": 9.5}, {"dropout": 1.0},
                                 {"t_divisor": 0.0}, {"se_depth": 0}, {"projector_ratio": 0}])
def test_invalid_config_values(bad):
    with pytest.raises(MddoseError, match="sp-diffdose config"):
        make_config(NAME, "tiny", **bad)


def test_config_roundtrip_and_defaults_are_paper():
    assert make_config(NAME, "paper") == SPDiffDoseConfig()
    cfg = make_config(NAME, "tiny", in_channels=5)
    torch.manual_seed(0)
    assert build_model_from_dict(cfg.to_dict()).config == cfg
    assert SPDiffDoseConfig(channel_mults=[1, 2], swin_levels=1).channel_mults == (1, 2)


def test_swin_at_the_deep_levels_and_a_projector_at_every_scale():
    cfg = make_config(NAME, "paper")
    with torch.device("meta"):
        model = SPDiffDose(cfg)
    swin_levels = [i for i, stage in enumerate(model.enc) if any(isinstance(m, SwinLayer2d) for m in stage.modules())]
    assert swin_levels == [2, 3]
    assert [f.projector[0].out_channels for f in model.fusion] == [2 * c for c in cfg.widths]
    assert [model.enc[i].layer.blocks[0].attn.heads for i in swin_levels] == [12, 24]


def test_structure_is_fused_at_every_scale(tiny, monkeypatch):
    """Zeroing the structure features of any single level changes the prediction."""
    x, t, c = _inputs()
    with torch.no_grad():
        ref = tiny(x, t, c)
        feats = tiny.structure(c)
    for level in range(len(feats)):
        zeroed = [f if i != level else torch.zeros_like(f) for i, f in enumerate(feats)]
        monkeypatch.setattr(tiny.structure, "forward", lambda cond, z=zeroed: z)
        with torch.no_grad():
            assert (tiny(x, t, c) - ref).abs().max() > 1e-5, f"level {level} not used"
