"""Opt-in training levers of issue 10: learning-rate warm-up, x0-prediction / Min-SNR-γ / possible-dose-mask
weighting in the diffusion objective, and several samples per slice at validation.

Every lever is a config key whose default leaves training as it was (checked here against the default path).
"""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch

from mddose.diffusion import GaussianDiffusion
from mddose.errors import MddoseError
from mddose.train.config import RECIPES, DiffusionConfig, TrainConfig
from mddose.kinds.diffusion2d import DiffusionObjective
from mddose.train.trainer import Trainer
from tests.train.test_trainer import DictDataset, slice_dose_score, tiny_config, tiny_model


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: fastest single-threaded


# ---------------------------------------------------------------------------- learning-rate warm-up
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_warmup_ramps_linearly_then_follows_the_schedule(recipe):
    plain = tiny_config(recipe=recipe, lr=None, batch_size=None, ema_decay=None, grad_clip=None).resolved()
    warm = dataclasses.replace(plain, warmup_steps=4)
    total = 20
    for s in range(total):
        expect = plain.lr_at(s, total) * min(1.0, (s + 1) / 4)
        assert math.isclose(warm.lr_at(s, total), expect, rel_tol=1e-12), s
    assert warm.lr_at(0, total) == plain.lr_at(0, total) / 4
    assert warm.lr_at(3, total) == plain.lr_at(3, total)                     # full lr from step W - 1 on
    assert warm.lr_at(total - 1, total) == plain.lr_at(total - 1, total)     # the schedule still ends where it did


@pytest.mark.parametrize("warmup", [0, 1])
def test_no_warmup_leaves_the_schedule_as_it_was(warmup):
    cfg = tiny_config(recipe="paper", lr=None, warmup_steps=warmup).resolved()
    assert [cfg.lr_at(s, 101) for s in (0, 50, 51, 100)] == [1e-2, 1e-2, 1e-2 + (51 / 100 - 0.5) / 0.5 * (1e-4 - 1e-2),
                                                             1e-2 + (1.0 - 0.5) / 0.5 * (1e-4 - 1e-2)]


def test_warmup_longer_than_the_run_never_reaches_the_peak():
    cfg = tiny_config(recipe="public", lr=None, warmup_steps=100).resolved()
    assert [cfg.lr_at(s, 10) for s in range(3)] == [1e-4 * 1 / 100, 1e-4 * 2 / 100, 1e-4 * 3 / 100]


def _lrs(run) -> list[float]:
    return [float(r.split(",")[3]) for r in (run / "logs" / "train.csv").read_text().splitlines()[1:]]


def test_trainer_applies_the_warmup(tmp_path):
    """The logged lr of every step is lr_at(step, total): the ramp, then the paper's schedule over the run."""
    cfg = tiny_config(recipe="paper", lr=1e-3, lr_min=1e-5, epochs=4, warmup_steps=4)   # 3 steps per epoch
    Trainer(cfg, tiny_model(), DictDataset(n=12), tmp_path, progress=False).fit()
    lrs = _lrs(tmp_path)
    expect = [cfg.resolved().lr_at(s, 12) for s in range(12)]
    assert len(lrs) == 12 and all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(lrs, expect))
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3], rel=1e-5) and math.isclose(lrs[-1], 1e-5)


@pytest.mark.parametrize("stop_at", [2, 5])     # inside the ramp, after it
def test_resume_inside_or_after_the_warmup_is_exact(tmp_path, stop_at):
    """A run stopped and resumed reaches bitwise the same weights and learning rates as an uninterrupted one
    (constant schedule, so that the first part's shorter budget does not change its schedule)."""
    ds = DictDataset(n=12)
    cfg = tiny_config(lr=1e-3, epochs=3, warmup_steps=4)
    straight = Trainer(cfg, tiny_model(), ds, tmp_path / "a", progress=False)
    straight.fit()
    first = Trainer(dataclasses.replace(cfg, max_steps=stop_at), tiny_model(), ds, tmp_path / "b", progress=False)
    first.fit()
    second = Trainer(cfg, tiny_model(seed=5), ds, tmp_path / "b", progress=False)
    assert second.resume() and second.step == stop_at
    second.fit()
    assert second.step == straight.step == 9
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert _lrs(tmp_path / "b") == _lrs(tmp_path / "a") and _lrs(tmp_path / "a")[:4] == [2.5e-4, 5e-4, 7.5e-4, 1e-3]


# ---------------------------------------------------------------------------- config keys
LEVERS = {"warmup_steps": 50, "val_samples": 4,
          "diffusion": {"prediction": "x0", "loss_weighting": "min_snr", "min_snr_gamma": 4.0, "mask_weight": 0.1}}


def test_every_lever_is_a_json_key_and_round_trips():
    cfg = TrainConfig.from_dict({"model": "md-dose", **LEVERS}, "levers.json").resolved()
    assert (cfg.warmup_steps, cfg.val_samples) == (50, 4)
    assert dataclasses.asdict(cfg.diffusion) == {**dataclasses.asdict(DiffusionConfig()), **LEVERS["diffusion"]}
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    d = GaussianDiffusion(cfg.diffusion)
    assert (d.prediction, d.loss_weighting, d.min_snr_gamma) == ("x0", "min_snr", 4.0)


def test_defaults_are_the_behaviour_before_the_levers():
    cfg = TrainConfig()
    assert (cfg.warmup_steps, cfg.val_samples) == (0, 1)
    diff = cfg.diffusion
    assert (diff.prediction, diff.loss_weighting, diff.min_snr_gamma, diff.mask_weight) == ("eps", "uniform", 5.0, None)
    assert diff.loss_type == "mse"
    assert GaussianDiffusion(diff).to_dict() == {"num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                                               "schedule": "linear", "prediction": "eps"}   # checkpoint entry as before


@pytest.mark.parametrize("bad,match", [
    ({"warmup_steps": -1}, "warmup_steps must be >= 0, got -1"),
    ({"warmup_steps": 2.5}, "warmup_steps must be an integer"),
    ({"val_samples": 0}, "val_samples must be >= 1, got 0"),
    ({"diffusion": {"prediction": "x1"}}, "prediction must be one of eps, v, x0"),
    ({"diffusion": {"loss_weighting": "p2"}}, "loss_weighting must be one of uniform, min_snr"),
    ({"diffusion": {"loss_weighting": 1}}, "diffusion.loss_weighting must be a string"),
    ({"diffusion": {"min_snr_gamma": 0}}, "diffusion.min_snr_gamma must be > 0"),
    ({"diffusion": {"min_snr_gamma": "5"}}, "diffusion.min_snr_gamma must be a number"),
    ({"diffusion": {"mask_weight": -0.5}}, r"diffusion.mask_weight must be >= 0 \(null: no mask weighting\)"),
    ({"diffusion": {"mask_weight": True}}, "diffusion.mask_weight must be a number"),
    ({"diffusion": {"mask_wieght": 0.1}}, "mask_wieght"),
    ({"diffusion": {"loss_type": "l2"}}, "loss_type must be one of mse, l1"),
    ({"diffusion": {"loss_type": 1}}, "diffusion.loss_type must be a string"),
])
def test_bad_lever_values_are_one_line_errors_naming_the_key(bad, match):
    with pytest.raises(MddoseError, match=match) as e:
        TrainConfig.from_dict(bad, "cfg.json")
    assert str(e.value).startswith("cfg.json") and "\n" not in str(e.value)


# ---------------------------------------------------------------------------- the diffusion objective
CPU = torch.device("cpu")


def _objective(**diffusion) -> DiffusionObjective:
    return DiffusionObjective(tiny_config(diffusion=DiffusionConfig(**diffusion)).resolved())


def _slices(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dose = torch.rand(4, 1, 8, 8, generator=g)
    mask = torch.zeros(4, 1, 8, 8)
    mask[:, :, 2:7, 1:6] = 1.0
    return {"cond": torch.rand(4, 2, 8, 8, generator=g), "dose": dose, "mask": mask}


def test_default_objective_ignores_the_mask_and_computes_the_loss_as_before():
    obj, batch, net = _objective(), _slices(), tiny_model()
    with_mask = obj.loss(net, batch, torch.Generator().manual_seed(7), 4, 0, CPU)
    without = obj.loss(net, {k: batch[k] for k in ("cond", "dose")}, torch.Generator().manual_seed(7), 4, 0, CPU)
    g = torch.Generator().manual_seed(7)
    t, noise = torch.randint(0, 1000, (4,), generator=g), torch.randn((4, 1, 8, 8), generator=g)
    before = obj.diffusion.loss(net, batch["dose"], batch["cond"], t=t, noise=noise)
    assert torch.equal(with_mask, without) and torch.equal(without, before)


def test_mask_weight_zero_ignores_errors_outside_the_mask():
    obj, batch = _objective(prediction="x0", mask_weight=0.0), _slices(1)
    inside = batch["mask"] > 0
    exact_inside = lambda x, t, c: torch.where(inside, 2 * batch["dose"] - 1, 3.0)  # noqa: E731
    assert obj.loss(exact_inside, batch, torch.Generator().manual_seed(0), 4, 0, CPU).item() == 0.0
    wrong_inside = lambda x, t, c: torch.where(inside, 3.0, 2 * batch["dose"] - 1)  # noqa: E731
    assert obj.loss(wrong_inside, batch, torch.Generator().manual_seed(0), 4, 0, CPU).item() > 1.0
    plain = _objective(prediction="x0")
    assert plain.loss(exact_inside, batch, torch.Generator().manual_seed(0), 4, 0, CPU).item() > 1.0


def test_mask_weight_builds_the_pixel_weights_and_normalises_by_their_sum():
    obj, batch, net = _objective(mask_weight=0.25), _slices(2), tiny_model()
    w = obj.pixel_weight(batch, CPU)
    assert w.shape == (4, 1, 8, 8) and set(w.unique().tolist()) == {0.25, 1.0}
    assert torch.equal(w == 1.0, batch["mask"] > 0)
    g = torch.Generator().manual_seed(3)
    t, noise = torch.randint(0, 1000, (4,), generator=g), torch.randn((4, 1, 8, 8), generator=g)
    d = obj.diffusion
    xm = d.to_model(batch["dose"])
    with torch.no_grad():
        err = (net(d.q_sample(xm, t, noise), t, batch["cond"]) - noise) ** 2
        got = obj.loss(net, batch, torch.Generator().manual_seed(3), 4, 0, CPU)
    torch.testing.assert_close(got, (w * err).sum() / w.sum(), rtol=1e-5, atol=0)


def test_mask_weight_without_a_mask_in_the_batch_is_a_one_line_error():
    obj, batch = _objective(mask_weight=0.1), _slices()
    del batch["mask"]
    with pytest.raises(MddoseError, match="mask_weight is set but the training slices carry no 'mask'") as e:
        obj.loss(tiny_model(), batch, torch.Generator(), 4, 0, CPU)
    assert "\n" not in str(e.value)


class MaskedDataset(DictDataset):
    """DictDataset with the slice dataset's ``mask`` item: (1, H, W) float 0/1."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return {**item, "mask": (self.cond[i, 1:2] > 0.3).float()}


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_trainer_runs_every_lever_together(tmp_path, prediction):
    diff = DiffusionConfig(prediction=prediction, loss_weighting="min_snr", mask_weight=0.1)
    cfg = tiny_config(epochs=2, warmup_steps=2, val_samples=2, diffusion=diff)
    tr = Trainer(cfg, tiny_model(), MaskedDataset(n=8), tmp_path, progress=False)
    tr.fit()
    assert tr.step == 4
    meta = json.loads((tmp_path / "last" / "config.json").read_text())
    assert meta["diffusion"]["prediction"] == prediction and meta["diffusion"]["loss_weighting"] == "min_snr"
    assert meta["train_config"]["diffusion"]["mask_weight"] == 0.1 and meta["train_config"]["warmup_steps"] == 2
    from mddose.train.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "last").diffusion.prediction == prediction


def test_trainer_with_l1_loss_records_it_in_the_checkpoint(tmp_path):
    cfg = tiny_config(epochs=1, diffusion=DiffusionConfig(prediction="x0", loss_type="l1", mask_weight=0.1))
    tr = Trainer(cfg, tiny_model(), MaskedDataset(n=8), tmp_path, progress=False)
    tr.fit()
    meta = json.loads((tmp_path / "last" / "config.json").read_text())
    assert meta["diffusion"]["loss_type"] == "l1" and meta["train_config"]["diffusion"]["loss_type"] == "l1"
    from mddose.train.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "last").diffusion.loss_type == "l1"


# ---------------------------------------------------------------------------- samples at validation
def test_validator_passes_val_samples(monkeypatch):
    import mddose.kinds.diffusion2d as validate_module

    seen = {}
    monkeypatch.setattr(validate_module, "patient_dose_score", lambda *a, **kw: seen.update(kw) or 1.5)
    cfg = tiny_config(val_samples=3).resolved()
    obj = DiffusionObjective(cfg)
    score = obj.validator(cfg, SimpleNamespace(val_patients=[], data_config=None), CPU)(tiny_model())
    assert score == 1.5 and seen["samples"] == 3 and seen["steps"] == cfg.val_steps


def test_slice_score_averages_the_samples():
    from mddose.diffusion import GaussianDiffusion, sample

    d, ds, net = GaussianDiffusion(), DictDataset(n=4), tiny_model().eval()
    cond, dose = ds.cond, ds.dose
    with torch.no_grad():
        for k in (1, 3):
            mean, _ = sample(net, d, cond, steps=2, samples=k, generator=torch.Generator().manual_seed(0))
            mask = dose > 0
            expect = float(((mean - dose).abs() * 70.0)[mask].mean())
            got = slice_dose_score(net, d, cond, dose, 70.0, steps=2, samples=k, batch_size=12)
            assert got == pytest.approx(expect, rel=1e-6), k
    assert slice_dose_score(net, d, cond, dose, 70.0, steps=2) == \
        slice_dose_score(net, d, cond, dose, 70.0, steps=2, samples=1)


def test_patient_score_samples_each_slice_k_times_in_batches_of_about_batch_size(monkeypatch):
    import mddose.kinds.diffusion2d as validate_module
    from mddose.data.inputs.slices import SliceConfig
    from mddose.data.phantom import make_phantom

    calls = []
    real = validate_module.sample

    def spy(model, diffusion, cond, **kw):
        calls.append((cond.shape[0], kw["samples"]))
        return real(model, diffusion, cond, **kw)

    monkeypatch.setattr(validate_module, "sample", spy)
    scfg = dataclasses.replace(SliceConfig.for_phantoms(), size=32)
    p = make_phantom(0, 32)
    net = tiny_model(in_channels=scfg.channels)
    from mddose.diffusion import GaussianDiffusion
    one = validate_module.patient_dose_score(net, GaussianDiffusion(), [p], scfg, steps=2, max_slices=6, batch_size=4)
    assert calls and all(k == 1 for _, k in calls) and max(n for n, _ in calls) == 4
    calls.clear()
    three = validate_module.patient_dose_score(net, GaussianDiffusion(), [p], scfg, steps=2, max_slices=6,
                                               batch_size=4, samples=3)
    assert all(k == 3 and n == 1 for n, k in calls) and len(calls) == 6      # 4 // 3 = 1 slice per batch
    assert math.isfinite(one) and math.isfinite(three) and one != three
