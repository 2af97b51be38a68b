"""What every compared method must satisfy, one table for all: exact parameter counts, the published sizes,
CPU-sized ``small`` presets, registry entries, config round trips, and that each one learns (overfits one
tiny example: loss down ≥ 10× in a fixed number of steps). Architecture-specific layout checks live in
test_c3d.py, test_hd_unet.py, test_sp_diffdose.py and test_structure_encoders.py; shapes, NaN and gradients
of every (model, preset, encoder) in test_registry.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from mddose.errors import MddoseError
from mddose.models import build_model, build_model_from_dict, make_config, model_info


@dataclass(frozen=True)
class Method:
    name: str
    counts: dict[str, int]            # preset → exact parameters with 9 input channels (as `mddose models` prints)
    published: float                  # the published size (parameters)
    tolerance: float                  # allowed relative difference of the paper preset
    kind: str
    dims: int
    fidelity: str
    source_has: str                   # a string the registry's source line must contain
    overrides: tuple = ()             # extra config overrides (md-dose structure encoders)


METHODS = [
    # C3D / HD-UNet: counted from the official code (baselines.md), ±5 %
    Method("c3d", {"paper": 32_354_402, "small": 2_027_210, "tiny": 36_230}, 32.35e6, 0.05,
           "regression", 3, "official-code", "LSL000UD/RTDosePrediction"),
    Method("hd-unet", {"paper": 7_249_089, "small": 1_861_985, "tiny": 29_469}, 7.25e6, 0.05,
           "regression", 3, "official-code", "Nguyen"),
    # DiffDP / SP-DiffDose: MD-Dose's Table 2, ±15 % (architectures reconstructed)
    Method("diffdp", {"paper": 37_235_457, "small": 2_597_761, "tiny": 84_177}, 37.36e6, 0.15,
           "diffusion", 2, "reconstruction", "2307.09794"),
    Method("sp-diffdose", {"paper": 86_436_649, "small": 2_571_207, "tiny": 61_671}, 84.11e6, 0.15,
           "diffusion", 2, "reconstruction", "2312.06187"),
    # MD-Dose: Table 2 prints 30.47 M; we leave out 3.77 M of position embeddings and unused heads (−7.5 %)
    Method("md-dose", {"paper": 28_176_961, "small": 1_671_297, "tiny": 111_713}, 30.47e6, 0.08,
           "diffusion", 2, "paper", "mamba_dose"),
]
BY_NAME = {m.name: m for m in METHODS}
COUNT_CASES = [(m.name, p, n) for m in METHODS for p, n in m.counts.items()]
LEARN_CASES = [("c3d", {}), ("hd-unet", {}), ("diffdp", {}), ("sp-diffdose", {})] + [
    ("md-dose", {"structure_encoder": se}) for se in ("none", "mamba", "conv", "transformer")]


def _count(name: str, preset: str, **kw) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(name, preset=preset, in_channels=9, **kw).parameters())


@pytest.mark.parametrize("name,preset,expected", COUNT_CASES, ids=[f"{n}-{p}" for n, p, _ in COUNT_CASES])
def test_exact_parameter_counts(name, preset, expected):
    assert _count(name, preset) == expected


@pytest.mark.parametrize("m", METHODS, ids=[m.name for m in METHODS])
def test_paper_preset_has_the_published_size(m):
    n = m.counts["paper"]
    assert abs(n - m.published) / m.published <= m.tolerance, f"{m.name}: {n:,} vs {m.published:,.0f}"


@pytest.mark.parametrize("m", METHODS, ids=[m.name for m in METHODS])
def test_small_preset_trains_on_a_cpu(m):
    assert m.counts["small"] <= 3_000_000 and m.counts["tiny"] < m.counts["small"]


@pytest.mark.parametrize("m", METHODS, ids=[m.name for m in METHODS])
def test_registry_entry(m):
    info = model_info(m.name)
    assert (info.kind, info.dims, info.fidelity) == (m.kind, m.dims, m.fidelity)
    assert m.source_has in info.source
    if m.fidelity == "reconstruction":
        assert "not published" in info.source
    if m.dims == 3:   # the small 3D presets train on a coarser grid: the registry says so
        assert make_config(m.name, "small").grid_size == 64 and "64" in info.notes
        assert make_config(m.name, "paper").grid_size == 128


@pytest.mark.parametrize("m", METHODS, ids=[m.name for m in METHODS])
def test_config_json_round_trip(m):
    cfg = make_config(m.name, "small", in_channels=10)
    d = json.loads(json.dumps(cfg.to_dict()))           # tuples become lists
    with torch.device("meta"):
        model = build_model_from_dict(d)
    assert model.config == cfg and d["model"] == m.name
    with pytest.raises(MddoseError, match="unknown key"):
        make_config(m.name, "tiny", bogus=1)


# ---------------------------------------------------------------------------------------------- learning
def _overfit(loss_fn, params, steps: int, lr: float) -> tuple[float, float]:
    """Adam on one example; (initial loss, final loss)."""
    opt = torch.optim.Adam(params, lr=lr)
    with torch.no_grad():
        initial = loss_fn().item()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    with torch.no_grad():
        return initial, loss_fn().item()


def _regression_case(model):
    """One 16³ volume: a smooth target inside a spherical possible-dose mask; masked L1 over the outputs."""
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(1, 9, 16, 16, 16, generator=g)
    target = F.interpolate(torch.rand(1, 1, 4, 4, 4, generator=g), size=(16, 16, 16), mode="trilinear",
                           align_corners=True)
    z = torch.arange(16.0) - 7.5
    mask = ((z[:, None, None] ** 2 + z[None, :, None] ** 2 + z[None, None, :] ** 2) < 7.5 ** 2).float()[None, None]
    return lambda: sum(w * ((o - target).abs() * mask).sum() / mask.sum() for w, o in model.training_outputs(cond))


def _diffusion_case(model):
    """One 32² slice: fixed x_t, t, cond; the denoiser regresses a fixed noise target (MSE)."""
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(1, 1, 32, 32, generator=g), torch.randn(1, 9, 32, 32, generator=g)
    t = torch.tensor([10])
    target = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    return lambda: (model(x, t, c) - target).square().mean()


CASE_OF_KIND = {"regression": (_regression_case, 120), "diffusion": (_diffusion_case, 60)}


@pytest.mark.parametrize("name,overrides", LEARN_CASES,
                         ids=[n + "".join(f"-{v}" for v in o.values()) for n, o in LEARN_CASES])
def test_learns_one_example(name, overrides):
    """Every model (and every md-dose structure encoder) drives its loss down ≥ 10× on one tiny example."""
    torch.manual_seed(0)
    model = build_model(name, preset="tiny", in_channels=9, **overrides)
    make_case, steps = CASE_OF_KIND[model_info(name).kind]
    initial, final = _overfit(make_case(model), model.parameters(), steps, lr=3e-3)
    assert final * 10 <= initial, f"{name} {overrides}: loss {initial:.4f} -> {final:.4f}"


@pytest.mark.parametrize("name", ["c3d", "hd-unet"])
def test_every_weight_of_a_3d_model_reaches_the_output(name):
    """Stronger than 'every parameter has a gradient': each weight's gradient is non-zero (a cut path, e.g.
    features multiplied by 0, would leave them at 0). Conv biases right before InstanceNorm are exempt:
    normalisation removes them, so their gradient is legitimately ~0."""
    torch.manual_seed(0)
    model = build_model(name, preset="tiny", in_channels=9)
    cond = torch.randn(2, 9, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    sum(w * o.abs().mean() for w, o in model.training_outputs(cond)).backward()
    dead = [n for n, p in model.named_parameters() if n.endswith("weight") and not p.grad.abs().sum() > 0]
    assert dead == []
