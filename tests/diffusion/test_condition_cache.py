"""The sampler's fast path: structure features encoded once per slice batch equal the reference (every step)."""

from __future__ import annotations

import pytest
import torch

from mddose.diffusion import GaussianDiffusion, sample
from mddose.models import build_model

CASES = [("md-dose", {"structure_encoder": se}) for se in ("mamba", "none", "conv", "transformer")] + [
    ("diffdp", {}), ("sp-diffdose", {})]
IDS = [n + "".join(f"-{v}" for v in o.values()) for n, o in CASES]


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: fastest single-threaded


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
@pytest.mark.parametrize("sampler,steps,samples", [("ddim", 4, 1), ("dpmpp2m", 3, 2), ("ddpm", 3, 1)])
def test_cached_condition_equals_reference(name, overrides, sampler, steps, samples):
    torch.manual_seed(0)
    model = build_model(name, preset="tiny", in_channels=9, **overrides).eval()
    cond = torch.randn(2, 9, 32, 32, generator=torch.Generator().manual_seed(1))
    diff = GaussianDiffusion()
    with torch.inference_mode():
        fast = sample(model, diff, cond, sampler=sampler, steps=steps, samples=samples,
                      generator=torch.Generator().manual_seed(2))
        ref = sample(model, diff, cond, sampler=sampler, steps=steps, samples=samples,
                     generator=torch.Generator().manual_seed(2), cache_condition=False)
    torch.testing.assert_close(fast[0], ref[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(fast[1], ref[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_denoise_of_encoded_condition_equals_forward(name, overrides):
    torch.manual_seed(0)
    model = build_model(name, preset="tiny", in_channels=9, **overrides).eval()
    g = torch.Generator().manual_seed(3)
    x, cond, t = torch.randn(2, 1, 32, 32, generator=g), torch.randn(2, 9, 32, 32, generator=g), torch.tensor([5, 900])
    with torch.no_grad():
        assert torch.equal(model(x, t, cond), model.denoise(x, t, model.encode_condition(cond)))


@pytest.mark.parametrize("cache,calls", [(True, 1), (False, 5)])
def test_structure_encoder_runs_once_per_batch_with_the_cache(cache, calls):
    torch.manual_seed(0)
    model = build_model("diffdp", preset="tiny", in_channels=9).eval()
    seen = []
    model.structure.register_forward_hook(lambda *a: seen.append(1))
    with torch.inference_mode():
        sample(model, GaussianDiffusion(), torch.randn(1, 9, 32, 32), sampler="ddim", steps=5, cache_condition=cache)
    assert len(seen) == calls
