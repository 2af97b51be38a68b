"""MD-Dose: parameter counts against the paper, input checks, conditioning on t and on the structures."""

from __future__ import annotations

import pytest
import torch

from mddose.errors import MddoseError
from mddose.models import build_model, make_config
from mddose.models.md_dose import MDDoseConfig



def _count(**kw) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model("md-dose", **kw).parameters())


def _inputs(c: int = 9, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 1, size, size, generator=g), torch.tensor([10, 500]),
            torch.randn(2, c, size, size, generator=g))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("md-dose", preset="tiny", in_channels=9).eval()


def test_no_structure_encoder_is_smaller_and_uses_cond():
    assert _count(preset="tiny", structure_encoder="none") < _count(preset="tiny")
    torch.manual_seed(0)
    model = build_model("md-dose", preset="tiny", structure_encoder="none").eval()
    x, t, c = _inputs()
    with torch.no_grad():
        out = model(x, t, c)
        out2 = model(x, t, c + 1.0)
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
    assert not torch.allclose(out, out2)


@pytest.mark.parametrize("bad", [{"structure_encoder": "cnn"}, {"scan": "zigzag"}, {"dims": (8, 16)},
                                 {"dims": (8, 15, 24, 32)}, {"enc_depths": (1, 1, -1, 1)},
                                 {"dims": ("8", 16, 24, 32)}, {"in_channels": 9.5}, {"d_state": 0}])
def test_invalid_config_values(bad):
    with pytest.raises(MddoseError):
        make_config("md-dose", "tiny", **bad)


@pytest.mark.parametrize("size", [(40, 32), (32, 24)])
def test_size_not_divisible_by_16(tiny, size):
    x = torch.randn(1, 1, *size)
    with pytest.raises(ValueError, match="divisible by 16"):
        tiny(x, torch.tensor([1]), torch.randn(1, 9, *size))


def test_wrong_cond_channels(tiny):
    x, t, _ = _inputs()
    with pytest.raises(ValueError, match="cond"):
        tiny(x, t, torch.randn(2, 4, 32, 32))


def test_timestep_changes_output(tiny):
    x, t, c = _inputs()
    with torch.no_grad():
        a = tiny(x, t, c)
        b = tiny(x, t + 300, c)
    assert (a - b).abs().max() > 1e-4


def test_cond_changes_output(tiny):
    x, t, c = _inputs()
    c2 = c.clone()
    c2[:, 1] = 0.0  # drop the PTV channel
    with torch.no_grad():
        a = tiny(x, t, c)
        b = tiny(x, t, c2)
    assert (a - b).abs().max() > 1e-4


def test_non_square_and_larger_input(tiny):
    x = torch.randn(1, 1, 48, 64)
    with torch.no_grad():
        out = tiny(x, torch.tensor([3]), torch.randn(1, 9, 48, 64))
    assert out.shape == (1, 1, 48, 64) and torch.isfinite(out).all()


def test_cross_scan_variant_runs():
    torch.manual_seed(0)
    model = build_model("md-dose", preset="tiny", scan="cross")
    x, t, c = _inputs()
    out = model(x, t, c)
    assert out.shape == (2, 1, 32, 32)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_fast_scan_matches_reference(tiny, monkeypatch):
    """The whole network gives the same output with the reference scan as with the automatic backend."""
    x, t, c = _inputs(seed=3)
    with torch.no_grad():
        auto = tiny(x, t, c)
        monkeypatch.setenv("MDDOSE_SCAN_BACKEND", "ref")
        ref = tiny(x, t, c)
    torch.testing.assert_close(auto, ref, rtol=1e-4, atol=1e-4)


def test_config_defaults_are_paper():
    assert make_config("md-dose", "paper") == MDDoseConfig()
    assert MDDoseConfig(dims=[8, 16, 24, 32]).dims == (8, 16, 24, 32)  # lists normalised to tuples
