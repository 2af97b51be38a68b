"""SP-DiffDose (our reconstruction), specific to its design: Swin blocks at the deep levels, a projector at every
scale, structure features used at every scale. Shared checks with DiffDP: test_diffusion_baselines.py."""

from __future__ import annotations

import pytest
import torch

from mddose.models import build_model, make_config
from mddose.models.sp_diffdose import SPDiffDose
from mddose.nn import SwinLayer2d

NAME = "sp-diffdose"


def _inputs(batch: int = 2, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 1, size, size, generator=g), torch.tensor([10, 500][:batch]),
            torch.randn(batch, 9, size, size, generator=g))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(NAME, preset="tiny").eval()


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
