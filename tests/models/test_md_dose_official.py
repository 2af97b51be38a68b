"""MD-Dose ``variant="official"``: the public code's Vision-Mamba details (LinjieFu-U/mamba_dose) as one option
set — exact parameter counts, RoPE, drop-path, RMSNorm, Vim's init, frozen never-used parameters, other image
sizes, learning and training through ``mddose train`` — and the default variant left exactly as it was."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from mddose.errors import MddoseError
from mddose.models import build_model, build_model_from_dict, make_config, model_info
from mddose.nn import vim
from mddose.nn.vim import (
    BiMambaMixer, DropPath, RMSNorm, VisionMambaLayer2d, apply_rope, rope_tables, vim_drop_path_rates,
)

PAPER_OFFICIAL_5 = 31_949_136     # the authors' printed "30.47 M" = this / 1024²


def _count(trainable_only: bool = False, **kw) -> int:
    with torch.device("meta"):
        model = build_model("md-dose", **kw)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _public_code_count(struc_channels: int) -> int:
    """The authors' ``MambaUnet`` (vim/mamba_struc_unet.py + vim/models_mamba.py), counted layer by layer from
    their code, independently of our modules: VisionMamba(img, patch, dim, depth, in) = patch conv + position
    embedding + 1000-class head + RMSNorms + bimamba-v2 mixers."""
    def mixer(d: int) -> int:
        di, r, n = 2 * d, math.ceil(d / 16), 16
        per_direction = di * 4 + di + di * (r + 2 * n) + r * di + di + di * n + di   # conv, x/dt proj, A, D
        return d * 2 * di + 2 * per_direction + di * d

    def stage(img: int, patch: int, d: int, depth: int, ch: int) -> int:
        return ch * d * patch ** 2 + d + (img // patch) ** 2 * d + d * 1000 + 1000 + d + depth * (d + mixer(d))

    encoder = stage(128, 2, 48, 4, 24) + stage(64, 2, 96, 6, 48) + stage(32, 2, 192, 6, 96) + stage(16, 2, 384, 8, 192)
    decoder = stage(16, 1, 192, 6, 192) + stage(32, 1, 96, 6, 96) + stage(64, 1, 48, 4, 48) + stage(128, 1, 48, 4, 48)
    up = 384 * 768 * 9 + 192 * 384 * 9 + 96 * 192 * 9 + 48 * 96 * 9            # Upsample convs, no bias
    reduce = 384 * 192 + 192 * 96 + 96 * 48                                     # reduce_chan_level3/2/1
    heads = (1 * 24 * 9 + 24) + (struc_channels * 24 * 9 + 24)                  # head, head_struc
    time = 48 + sum(96 * c + c for c in (48, 96, 192, 384, 384, 192, 96, 48, 48))  # W (a Parameter) + 9 proj
    return 2 * encoder + decoder + up + reduce + heads + time + 48 * 9            # output conv, no bias


# ------------------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("in_channels,expected", [(5, PAPER_OFFICIAL_5), (9, 31_950_000)])
def test_paper_preset_counts_the_authors_parameters(in_channels, expected):
    n = _count(preset="paper", in_channels=in_channels, variant="official")
    assert n == expected == _public_code_count(in_channels)
    assert f"{PAPER_OFFICIAL_5 / 1024 ** 2:.2f}" == "30.47"       # Table 2's figure
    # never-used heads and time projection, and the 48 Fourier frequencies: counted, frozen
    frozen = n - _count(trainable_only=True, preset="paper", in_channels=in_channels, variant="official")
    heads = (2 * (48 + 96 + 192 + 384) + 192 + 96 + 48 + 48) * 1000 + 12 * 1000     # 12 stages' Linear(C, 1000)
    assert frozen == heads + (96 * 384 + 384) + 48 == 1_873_296


@pytest.mark.parametrize("preset,expected", [("small", 3_771_520), ("tiny", 359_280)])
def test_small_presets_count(preset, expected):
    assert _count(preset=preset, in_channels=9, variant="official") == expected


@pytest.mark.parametrize("preset,expected", [("paper", 28_176_961), ("small", 1_671_297), ("tiny", 111_713)])
def test_default_variant_counts_unchanged(preset, expected):
    assert _count(preset=preset, in_channels=9) == expected == _count(preset=preset, in_channels=9, variant="mddose")
    assert make_config("md-dose", preset).variant == "mddose"


#: Recorded from the network before the official variant existed (seed 0, in_channels 9): hash of parameter/buffer
#: names and shapes, float64 sum and sum of squares of the (float32) state. The output sums recorded then are
#: replaced by FLOAT64_FINGERPRINT (see there).
DEFAULT_FINGERPRINT = {
    "tiny": ("67d7b51b823e5f60", 372.1512794755231, 38439.90082418223),
    "small": ("f144b6ce700c4afb", 92462.14959710106, 326109.1789070211),
}
#: Unit roundoff of float32 and float64.
U32, U64 = 2.0 ** -24, 2.0 ** -53
#: Roundings per element of the initialisers (uniform: scale and shift; normal: Box-Muller's log, sqrt, cos and
#: two products, then std and mean): at most 8, each ≤ U relative. Two machines whose kernels round each of
#: these differently (FMA or not, SIMD transcendental functions) can differ by 2·8·U·|v| per element, so sums of
#: the state by ≤ 16·U·Σ|v| and sums of squares by ≤ 2·16·U·Σv² (+ the squaring's own rounding). Measured:
#: ≤ 0.002·U·Σ|v| between torch's AVX-512, AVX2 and scalar kernels (ATEN_CPU_CAPABILITY). A changed
#: initialisation scheme, shape or random-stream order moves the sums by ~sqrt(Σv²) (196 for tiny, 571 for
#: small): 10,000 and 3,000 times the tolerance. Smaller changes (one tensor, one element) are the float64
#: fingerprint's to catch (below).
INIT_ROUNDINGS = 16


def _inputs(seed: int, size: int = 32, batch: int = 2, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 1, size, size, generator=g, dtype=dtype), torch.tensor([10, 500][:batch]),
            torch.randn(batch, 9, size, size, generator=g, dtype=dtype))


def _state_sums(sd) -> tuple[float, float, float]:
    """(Σv, Σ|v|, Σv²) over the floating-point state, in float64."""
    vals = [v.double() for v in sd.values() if v.is_floating_point()]
    return (sum(float(v.sum()) for v in vals), sum(float(v.abs().sum()) for v in vals),
            sum(float(v.square().sum()) for v in vals))


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_default_variant_is_the_network_of_before(preset):
    torch.manual_seed(0)
    model = build_model("md-dose", preset=preset, in_channels=9).eval()
    sd = model.state_dict()
    names = hashlib.sha256(";".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items()).encode()).hexdigest()[:16]
    names0, total0, squares0 = DEFAULT_FINGERPRINT[preset]
    assert names == names0
    total, abs_total, squares = _state_sums(sd)
    assert abs(total - total0) <= INIT_ROUNDINGS * U32 * abs_total
    assert abs(squares - squares0) <= (2 * INIT_ROUNDINGS + 1) * U32 * squares


def _float64_fingerprint(preset: str, edit=None) -> tuple[float, float, float, float, float]:
    """The network built and run in float64 (default dtype float64 while it is built, seed 0; inputs drawn in
    float64 from seed 1): (Σ state, Σ|state|, Σ output, Σ|output|, Σ output²). ``edit(model)`` may change the
    network before it runs."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = build_model("md-dose", preset=preset, in_channels=9).eval()
        with torch.no_grad():
            if edit is not None:
                edit(model)
            out = model(*_inputs(1, dtype=torch.float64)).double()
    finally:
        torch.set_default_dtype(previous)
    total, abs_total, _ = _state_sums(model.state_dict())
    return total, abs_total, float(out.sum()), float(out.abs().sum()), float(out.square().sum())


#: _float64_fingerprint, recorded for issue 19 from the code that reproduced DEFAULT_FINGERPRINT (and the float32
#: output sums recorded with it, 43.0916/1105.29 and -136.383/295.948) on the recording machine. In float64 the
#: rounding of a kernel is U64 = 1.1e-16 relative: with ≤ 10⁵ roundings along any path through the network
#: (accumulations of ≤ 10⁴ terms, a few dozen layers) the output sums of two machines differ by
#: ≤ 10⁵·U64·Σ|out| ≈ 1e-11·Σ|out|, so FLOAT64_REL = 1e-10 of Σ|out| (Σ out², relative to itself). Measured across
#: torch's AVX-512, AVX2 and scalar kernels: ≤ 3e-16. Whereas float32 kernels gave output sums 5e-5 apart
#: (Mamba's selective scan and the normalisations amplify the rounding), which is why the outputs are
#: compared in float64. One parameter element changed by 1e-6 relative moves these sums by far more than
#: 1e-10 (tested below).
FLOAT64_FINGERPRINT = {
    "tiny": (178.17292982053658, 15969.556707568901, 489.73017497787896, 831.8780639110535, 545.0674385358607),
    "small": (92376.88575716595, 178715.78600786423, 185.99093747630576, 396.67803351066016, 119.66310629452067),
}
FLOAT64_REL = 1e-10


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_default_variant_in_float64_is_the_recorded_computation(preset):
    total, abs_total, out_sum, out_abs, out_sq = _float64_fingerprint(preset)
    total0, abs_total0, out_sum0, out_abs0, out_sq0 = FLOAT64_FINGERPRINT[preset]
    assert abs(total - total0) <= INIT_ROUNDINGS * U64 * abs_total
    assert abs(abs_total - abs_total0) <= INIT_ROUNDINGS * U64 * abs_total
    assert abs(out_sum - out_sum0) <= FLOAT64_REL * out_abs
    assert abs(out_abs - out_abs0) <= FLOAT64_REL * out_abs
    assert abs(out_sq - out_sq0) <= FLOAT64_REL * out_sq


def _scale_one_weight(model) -> None:
    """One element of the output convolution's weight scaled by 1 + 1e-6 (a changed coefficient)."""
    model.output.weight.view(-1)[0] *= 1 + 1e-6


def test_float64_fingerprint_catches_a_one_in_a_million_change():
    """What FLOAT64_REL can see: one of 111,713 parameters changed by 1e-6 relative."""
    _, _, out_sum, out_abs, out_sq = _float64_fingerprint("tiny", _scale_one_weight)
    _, _, out_sum0, out_abs0, out_sq0 = FLOAT64_FINGERPRINT["tiny"]
    assert max(abs(out_sum - out_sum0) / out_abs, abs(out_sq - out_sq0) / out_sq) > 100 * FLOAT64_REL


# ------------------------------------------------------------------------------------------ behaviour
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("md-dose", preset="tiny", in_channels=9, variant="official")


def test_official_layers_are_the_public_codes(tiny):
    stages = [m for m in tiny.modules() if isinstance(m, VisionMambaLayer2d)]
    assert len(stages) == 3 * 4                                   # noise encoder, structure encoder, decoder
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in tiny.modules())       # RMSNorm everywhere
    assert sum(isinstance(m, RMSNorm) for m in tiny.modules()) == sum(s.depth + 1 for s in stages)
    assert tiny.output.bias is None
    assert [s.grid for s in stages[:4]] == [16, 8, 4, 2] and [s.grid for s in stages[8:]] == [4, 8, 16, 32]
    frozen = sorted(n for n, p in tiny.named_parameters() if not p.requires_grad)
    assert frozen == sorted(["time.features.W", "time_unused.1.weight", "time_unused.1.bias"]
                            + [f"{s}.head.{w}" for s in [f"{e}.layers.{i}" for e in ("encoder", "structure")
                                                        for i in range(4)] + [f"dec_layers.{k}" for k in range(4)]
                               for w in ("weight", "bias")])


def test_vim_initialisation(tiny):
    stages = [m for m in tiny.modules() if isinstance(m, VisionMambaLayer2d)]
    mixers = [m for s in stages for m in s.modules() if isinstance(m, BiMambaMixer)]
    dt_bias = torch.cat([b.ssm_fwd.dt_proj.bias for b in mixers] + [b.ssm_bwd.dt_proj.bias for b in mixers])
    assert dt_bias.numel() > 0 and torch.equal(dt_bias, torch.zeros_like(dt_bias))
    linear = torch.cat([m.weight.flatten() for s in stages for n, m in s.named_modules()
                        if isinstance(m, torch.nn.Linear) and not n.endswith("out_proj")])
    assert linear.numel() > 20_000 and abs(linear.std().item() - 0.02) < 0.001
    assert linear.abs().max() < 0.02 * 6
    pos = torch.cat([s.pos_embed.flatten() for s in stages])
    assert abs(pos.std().item() - 0.02) < 0.001
    # out_proj: PyTorch's Linear default (uniform ±1/sqrt(fan_in)) divided by sqrt(depth)
    for s in stages:
        for block in s.blocks:
            w = block.mixer.out_proj.weight
            assert w.abs().max() <= 1 / math.sqrt(w.shape[1] * s.depth) + 1e-7
    # the default variant keeps mamba-ssm's dt init: softplus(bias) log-uniform in [1e-3, 0.1]
    torch.manual_seed(0)
    default = build_model("md-dose", preset="tiny", in_channels=9)
    dt = torch.nn.functional.softplus(torch.cat([m.ssm_fwd.dt_proj.bias for m in default.modules()
                                                 if isinstance(m, BiMambaMixer)]))
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001


def test_drop_path_in_training_only(tiny):
    x, t, c = _inputs(3)
    tiny.eval()
    with torch.no_grad():
        a, b = tiny(x, t, c), tiny(x, t, c)
    assert torch.equal(a, b)
    tiny.train()
    with torch.no_grad():
        runs = [tiny(x, t, c) for _ in range(3)]
    tiny.eval()
    assert all((r - a).abs().max() > 1e-4 for r in runs)
    assert (runs[0] - runs[1]).abs().max() > 1e-4 or (runs[1] - runs[2]).abs().max() > 1e-4
    # the default variant has no stochastic layer
    torch.manual_seed(0)
    default = build_model("md-dose", preset="tiny", in_channels=9).train()
    with torch.no_grad():
        assert torch.equal(default(x, t, c), default(x, t, c))


@pytest.mark.parametrize("depth,expected", [(1, [0.1]), (4, [0.0, 0.1 / 3, 0.2 / 3, 0.1]), (0, [])])
def test_drop_path_rates_follow_vim(depth, expected):
    assert vim_drop_path_rates(depth, 0.1) == pytest.approx(expected)


def test_drop_path_drops_whole_samples():
    torch.manual_seed(0)
    drop = DropPath(0.5).train()
    y = drop(torch.ones(256, 3, 4))
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert (per_sample.min(1).values == per_sample.max(1).values).all()
    assert 0.35 < (per_sample[:, 0] == 0).float().mean() < 0.65
    assert torch.equal(drop.eval()(y), y)


def test_rope_is_a_rotation_by_relative_position():
    cos, sin = rope_tables(8, 3, 5)
    assert cos.shape == sin.shape == (15, 8)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 8, generator=g), torch.randn(1, 1, 8, generator=g)
    rq, rk = apply_rope(q.expand(1, 15, 8), cos, sin), apply_rope(k.expand(1, 15, 8), cos, sin)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1).expand(1, 15))
    torch.testing.assert_close(rq[0, 0], q[0, 0])                                    # position (0, 0): identity
    dots = (rq[0, :, None, :] * rk[0, None, :, :]).sum(-1)                            # (15, 15)
    # same offset (one row down, one column right) gives the same dot product; another offset does not
    torch.testing.assert_close(dots[0, 6], dots[7, 13])
    assert (dots[0, 6] - dots[0, 7]).abs() > 1e-3
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_tables(6, 2, 2)


def test_rope_breaks_the_scan_symmetry(monkeypatch):
    """Permutation test. With equal forward/backward SSM parameters and no position embedding, a Vim layer is
    equivariant to reversing the token order (a 180° turn of the map): reversal swaps the two directions.
    RoPE must break that — the layer then sees where each token is."""
    torch.manual_seed(0)
    layer = VisionMambaLayer2d(8, 2, grid=4, d_state=4).eval()
    with torch.no_grad():
        layer.pos_embed.zero_()
        for block in layer.blocks:
            block.mixer.ssm_bwd.load_state_dict(block.mixer.ssm_fwd.state_dict())
    x = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    turn = lambda z: z.flip(-1).flip(-2)  # noqa: E731
    with torch.no_grad():
        with_rope = (layer(turn(x)), turn(layer(x)))
        monkeypatch.setattr(vim, "rope_tables", lambda c, h, w, **kw: (torch.ones(h * w, c), torch.zeros(h * w, c)))
        without = (layer(turn(x)), turn(layer(x)))
    torch.testing.assert_close(*without, rtol=1e-5, atol=1e-5)
    assert (with_rope[0] - with_rope[1]).abs().max() > 1e-2


def test_condition_features_cache_gives_the_same_output(tiny):
    x, t, c = _inputs(4)
    tiny.eval()
    with torch.no_grad():
        torch.testing.assert_close(tiny(x, t, c), tiny.denoise(x, t, tiny.encode_condition(c)), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ image sizes
@pytest.mark.parametrize("size", [(32, 32), (64, 48), (16, 16)])
def test_other_sizes_resize_the_position_embeddings(tiny, size):
    tiny.eval()
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        out = tiny(x, torch.tensor([7]), torch.randn(1, 9, *size))
    assert out.shape == (1, 1, *size) and torch.isfinite(out).all()


def test_position_embedding_at_and_off_its_grid():
    layer = VisionMambaLayer2d(8, 1, grid=4, d_state=4)
    assert layer.position_embedding(4, 4) is layer.pos_embed
    with torch.no_grad():
        layer.pos_embed.copy_(torch.linspace(-1, 1, 8).expand(1, 16, 8))     # the same vector everywhere
    resized = layer.position_embedding(6, 10)
    assert resized.shape == (1, 60, 8)
    torch.testing.assert_close(resized, layer.pos_embed[:, :1].expand(1, 60, 8))


@pytest.mark.parametrize("size", [(40, 32), (32, 24)])
def test_size_not_divisible_is_refused(tiny, size):
    with pytest.raises(ValueError, match="divisible by 16"):
        tiny(torch.randn(1, 1, *size), torch.tensor([1]), torch.randn(1, 9, *size))


@pytest.mark.parametrize("bad,match", [
    ({"variant": "authors"}, "variant must be one of mddose, official"),
    ({"variant": "official", "scan": "cross"}, "needs scan 'bi'"),
    ({"variant": "official", "structure_encoder": "conv"}, "structure_encoder 'mamba' or 'none'"),
    ({"variant": "official", "dims": (8, 16, 24, 30)}, "dims divisible by 4"),
    ({"variant": "official", "image_size": 40}, "multiple of 16"),
    ({"variant": "official", "image_size": 8}, "multiple of 16"),
])
def test_invalid_official_configs(bad, match):
    with pytest.raises(MddoseError, match=match):
        make_config("md-dose", "tiny", **bad)


def test_config_round_trip_and_registry_choice():
    cfg = make_config("md-dose", "tiny", in_channels=9, variant="official")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["variant"] == "official"
    with torch.device("meta"):
        assert build_model_from_dict(d).config == cfg
    assert dict(model_info("md-dose").choices)["variant"] == ("mddose", "official")
    assert make_config("md-dose", "tiny", structure_encoder="none", variant="official").official


# ------------------------------------------------------------------------------------------ learning
def test_learns_one_example():
    """Overfits one 32² example (fixed x_t, t, cond; MSE to a fixed target): loss down ≥ 10× in 60 Adam steps,
    trained with drop-path on, measured in eval mode (as test_compared_methods.py::test_learns_one_example)."""
    torch.manual_seed(0)
    model = build_model("md-dose", preset="tiny", in_channels=9, variant="official")
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(1, 1, 32, 32, generator=g), torch.randn(1, 9, 32, 32, generator=g)
    t, target = torch.tensor([10]), torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    loss = lambda: (model(x, t, c) - target).square().mean()  # noqa: E731

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            value = loss().item()
        model.train()
        return value

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    initial = evaluate()
    for _ in range(60):
        opt.zero_grad()
        loss().backward()
        opt.step()
    final = evaluate()
    assert final * 10 <= initial, f"loss {initial:.4f} -> {final:.4f}"
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_trains_through_mddose_train(tmp_path):
    """``"model_overrides": {"variant": "official"}`` trains 2 steps on phantoms; the checkpoint rebuilds it, with
    the position embeddings learned for the 64² slices of the data, and predicts a phantom."""
    import numpy as np

    from mddose.cli.main import main
    from mddose.data.formats.nifti import read_nifti_array
    from mddose.train.checkpoint import load_checkpoint

    cfg = {"model": "md-dose", "preset": "tiny", "data": {"phantoms": {"n": 2, "size": 64, "val": 1},
                                                          "val_max_slices": 4},
           "device": "cpu", "batch_size": 2, "slices": {"size": 64}, "val_steps": 2,
           "model_overrides": {"variant": "official"}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    run = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(run), "--max-steps", "2", "--no-progress"]) == 0
    meta = json.loads((run / "best" / "config.json").read_text())
    assert meta["step"] == 2 and meta["model"]["variant"] == "official" and meta["model"]["image_size"] == 64
    model = load_checkpoint(run / "best").model
    assert model.config.official and model.encoder.layers[0].grid == 32
    assert all(torch.isfinite(p).all() for p in model.parameters())
    phantom = tmp_path / "patients"
    assert main(["data", "phantom", "--n", "1", "--out", str(phantom), "--size", "64", "--seed", "500"]) == 0
    pred = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run / "best"), "--input", str(phantom), "--out", str(pred),
                 "--format", "nifti", "--steps", "2"]) == 0
    (dose_file,) = pred.glob("*.nii.gz")
    dose = read_nifti_array(dose_file)[0]
    assert dose.shape[1:] == (64, 64) and np.isfinite(dose).all() and dose.any()
