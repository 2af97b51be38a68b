"""The 2D diffusion baselines DiffDP and SP-DiffDose (our reconstructions), checked alike: the sizes they run
at, timestep forms, that timestep and structure both reach the output, input checks and config checks.
Counts, published sizes and learning: test_compared_methods.py; SP-DiffDose's layout: test_sp_diffdose.py."""

from __future__ import annotations

import pytest
import torch

from mddose.errors import MddoseError
from mddose.models import build_model, make_config
from mddose.models.diffdp import DiffDPConfig
from mddose.models.sp_diffdose import SPDiffDoseConfig

NAMES = ["diffdp", "sp-diffdose"]
DEFAULT_CONFIG = {"diffdp": DiffDPConfig, "sp-diffdose": SPDiffDoseConfig}
BAD_VALUES = {
    "diffdp": [{"channels": 0}, {"channel_mults": ()}, {"channel_mults": (1, 0)}, {"channel_mults": ("1", 2)},
               {"attn_levels": (5,)}, {"attn_heads": 3}, {"num_res_blocks": 0}, {"in_channels": 9.5},
               {"dropout": 1.0}, {"t_divisor": 0.0}, {"se_blocks": 0}],
    "sp-diffdose": [{"channels": 0}, {"channel_mults": ()}, {"channel_mults": (1, 0)}, {"channel_mults": ("1", 2)},
                    {"swin_levels": 0}, {"swin_levels": 4}, {"channels": 14, "head_dim": 5}, {"window": 0},
                    {"mid_depth": -1}, {"in_channels": 9.5}, {"dropout": 1.0}, {"t_divisor": 0.0},
                    {"se_depth": 0}, {"projector_ratio": 0}],
}
BAD_CASES = [(n, b) for n in NAMES for b in BAD_VALUES[n]]


def _inputs(batch: int = 2, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 1, size, size, generator=g), torch.tensor([10, 500][:batch]),
            torch.randn(batch, 9, size, size, generator=g))


@pytest.fixture(scope="module", params=NAMES)
def tiny(request):
    torch.manual_seed(0)
    return build_model(request.param, preset="tiny").eval()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("preset,size", [("paper", 128), ("paper", 256), ("small", 128), ("small", 256)])
def test_paper_and_small_sizes_on_meta(name, preset, size):
    with torch.device("meta"):
        model = build_model(name, preset=preset)
        out = model(torch.zeros(1, 1, size, size), torch.tensor([5]), torch.zeros(1, 9, size, size))
    assert out.shape == (1, 1, size, size)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [128, 256])
def test_small_runs_on_cpu(name, size):
    torch.manual_seed(0)
    model = build_model(name, preset="small").eval()
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


@pytest.mark.parametrize("name,bad", BAD_CASES, ids=[f"{n}-{'-'.join(b)}" for n, b in BAD_CASES])
def test_invalid_config_values(name, bad):
    with pytest.raises(MddoseError, match=f"{name} config"):
        make_config(name, "tiny", **bad)


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_the_paper_preset(name):
    assert make_config(name, "paper") == DEFAULT_CONFIG[name]()
