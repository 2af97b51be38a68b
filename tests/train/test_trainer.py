"""Trainer: overfitting, exact resume, NaN handling, configs and recipes, phantom integration, CLI.

Also home of the test-local denoiser (``TinyDenoiser``, registered as ``"test-tiny"``) and the
synthetic dataset that test_checkpoint.py and test_ddp.py import.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from mddose.errors import MddoseError
from mddose.kinds.diffusion2d import validation_sample
from mddose.models import registry
from mddose.train.config import RECIPES, DataConfig, TrainConfig, builtin_config, load_train_config
from mddose.train.trainer import Trainer


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: fastest single-threaded


# ---------------------------------------------------------------------------- test-local model and data
@dataclass(frozen=True)
class TinyConfig(registry.ModelConfig):
    in_channels: int = 2
    width: int = 16
    dropout: float = 0.0


class TinyDenoiser(nn.Module):
    """A few convolutions with a sinusoidal time embedding: model(x_t, t, cond) -> (B, 1, H, W)."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        w = cfg.width
        self.t_mlp = nn.Sequential(nn.Linear(16, w), nn.SiLU(), nn.Linear(w, w))
        self.inp = nn.Conv2d(1 + cfg.in_channels, w, 3, padding=1)
        self.mid = nn.Conv2d(w, w, 3, padding=1)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Conv2d(w, 1, 3, padding=1)

    def forward(self, x, t, cond):
        freqs = torch.exp(torch.arange(8, device=x.device) * (-math.log(1000.0) / 8))
        ang = t.float()[:, None] * freqs[None]
        emb = self.t_mlp(torch.cat([ang.sin(), ang.cos()], dim=1))
        h = torch.nn.functional.silu(self.inp(torch.cat([x, cond], dim=1)) + emb[:, :, None, None])
        h = self.drop(torch.nn.functional.silu(self.mid(h)))
        return self.out(h)


if "test-tiny" not in registry._REGISTRY:
    registry.register_model("test-tiny", TinyConfig)(TinyDenoiser)


def tiny_model(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return registry.build_model("test-tiny", **kw)


class DictDataset(torch.utils.data.Dataset):
    """n synthetic slices: cond (2, H, W) blobs, dose (1, H, W) = smooth function of cond in [0, 1]."""

    def __init__(self, n: int = 12, size: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.cond = torch.rand((n, 2, size, size), generator=g)
        k = torch.ones(1, 1, 5, 5) / 25
        self.dose = torch.nn.functional.conv2d(self.cond[:, 1:2], k, padding=2).clamp(0, 1)

    def __len__(self):
        return self.cond.shape[0]

    def __getitem__(self, i):
        return {"cond": self.cond[i], "dose": self.dose[i], "patient": 0, "z": int(i)}


def tiny_config(**kw) -> TrainConfig:
    base = dict(model="test-tiny", preset=None, data=DataConfig(phantoms={"n": 1}), recipe="public",
                batch_size=4, lr=1e-3, epochs=3, ema_decay=0.9, grad_clip=1.0, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


@torch.no_grad()
def slice_dose_score(model: nn.Module, diffusion, cond: torch.Tensor, dose: torch.Tensor, reference_dose: float, *,
                     sampler: str = "ddim", steps: int = 10, seed: int = 0, batch_size: int = 16,
                     device: torch.device | str = "cpu", samples: int = 1) -> float:
    """Mean absolute error (Gy) on slices, over pixels where the reference dose is > 0 (a test-local validator).

    cond: (S, C, H, W); dose: (S, 1, H, W) in data units (dose / reference dose); each slice predicted as the
    mean of ``samples`` samples.
    """
    was_training = model.training
    model.eval()
    pred = validation_sample(model, diffusion, cond, device, sampler, steps, seed, batch_size, samples)
    model.train(was_training)
    mask = dose > 0
    if not mask.any():
        mask = torch.ones_like(dose, dtype=torch.bool)
    return float(((pred - dose).abs() * reference_dose)[mask].mean())


def slice_validator(trainer_ds: DictDataset):
    from mddose.diffusion import GaussianDiffusion
    d = GaussianDiffusion()
    return lambda m: slice_dose_score(m, d, trainer_ds.cond[:4], trainer_ds.dose[:4], 70.0, steps=2)


# ---------------------------------------------------------------------------- training behaviour
def test_tiny_model_overfits_fixed_batch(tmp_path):
    torch.manual_seed(0)
    ds = DictDataset(n=4, size=16)
    tr = Trainer(tiny_config(lr=3e-3, grad_clip=None, epochs=1000), tiny_model(width=32), ds, tmp_path,
                 progress=False)
    batch = {"cond": ds.cond, "dose": ds.dose}
    losses = [tr.train_step(batch, 4) for _ in range(400)]
    first, last = sum(losses[:5]) / 5, sum(losses[-40:]) / 40
    assert first > 10 * last, (first, last)


def _weights(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in tr.ema.module.state_dict().items()})
    for i, st in tr.opt.state.items():
        out.update({f"opt.{i}.{k}": v for k, v in st.items()})
    return out


@pytest.mark.parametrize("stop_at", [3, 5])  # an epoch boundary and mid-epoch (3 steps per epoch)
def test_resume_is_bitwise_exact(tmp_path, stop_at):
    ds = DictDataset(n=12)
    cfg = tiny_config(epochs=3, checkpoint_every=2)
    straight = Trainer(cfg, tiny_model(dropout=0.2), ds, tmp_path / "a", validate=slice_validator(ds),
                       progress=False)
    straight.fit()
    assert straight.step == 9

    first = Trainer(dataclasses.replace(cfg, max_steps=stop_at), tiny_model(dropout=0.2), ds, tmp_path / "b",
                    validate=slice_validator(ds), progress=False)
    first.fit()
    assert first.step == stop_at
    torch.manual_seed(123)  # the process state after a "kill" is irrelevant
    second = Trainer(cfg, tiny_model(seed=99, dropout=0.2), ds, tmp_path / "b", validate=slice_validator(ds),
                     progress=False)
    assert second.resume() and second.step == stop_at
    second.fit()
    assert second.step == 9
    a, b = _weights(straight), _weights(second)
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight.best_score == second.best_score
    rows = (tmp_path / "b" / "logs" / "train.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 10)]
    assert rows[1:] != [] and (tmp_path / "b" / "best" / "ema.safetensors").is_file()


class NaNAfter(nn.Module):
    def __init__(self, inner: nn.Module, calls: int):
        super().__init__()
        self.inner, self.calls, self.n = inner, calls, 0

    def forward(self, x, t, cond):
        self.n += 1
        y = self.inner(x, t, cond)
        return y * float("nan") if self.n >= self.calls else y


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    from mddose.train.checkpoint import load_checkpoint
    ds = DictDataset(n=8)   # 2 steps per epoch → checkpoint at step 4, NaN at step 5
    tr = Trainer(tiny_config(epochs=10), NaNAfter(tiny_model(), 5), ds, tmp_path, progress=False)
    with pytest.raises(MddoseError, match=r"training diverged: loss is NaN at step 5"):
        tr.fit()
    b = load_checkpoint(tmp_path / "last", model=NaNAfter(tiny_model(), 10**9))
    assert b.meta["step"] == 4
    assert all(torch.isfinite(v).all() for v in b.model.state_dict().values())


def test_time_budget_and_max_steps_stop_with_checkpoint(tmp_path):
    ds = DictDataset(n=8)
    tr = Trainer(tiny_config(epochs=100, time_budget_s=0.0), tiny_model(), ds, tmp_path, progress=False)
    out = tr.fit()
    assert tr.step == 1 and out == tmp_path / "last"
    assert json.loads((tmp_path / "last" / "config.json").read_text())["step"] == 1


def test_batch_sampler_shards_union_equals_single_process():
    from mddose.train.distributed import EpochBatchSampler
    single = list(EpochBatchSampler(10, 4, seed=1, epoch=2))
    r0 = list(EpochBatchSampler(10, 4, seed=1, epoch=2, rank=0, world=2))
    r1 = list(EpochBatchSampler(10, 4, seed=1, epoch=2, rank=1, world=2))
    assert len(single) == 2 and [a + b for a, b in zip(r0, r1)] == single
    assert list(EpochBatchSampler(10, 4, seed=1, epoch=2, start=1)) == single[1:]
    assert single != list(EpochBatchSampler(10, 4, seed=1, epoch=3))


# ---------------------------------------------------------------------------- config and recipes
def test_unknown_config_key_names_key_and_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"model": "md-dose", "epochz": 3}))
    with pytest.raises(MddoseError, match=r"c\.json.*epochz"):
        load_train_config(p)
    p.write_text(json.dumps({"data": {"phantoms": {"n": 2}, "tarin": "x"}}))
    with pytest.raises(MddoseError, match=r"data\.tarin"):
        load_train_config(p)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipes_fill_unset_fields(recipe):
    cfg = tiny_config(recipe=recipe, batch_size=None, lr=None, ema_decay=None, grad_clip=None).resolved()
    for k, v in RECIPES[recipe].items():
        assert getattr(cfg, k) == v
    assert tiny_config(recipe=recipe, batch_size=3).resolved().batch_size == 3


def test_paper_lr_schedule():
    cfg = tiny_config(recipe="paper", lr=None, epochs=10).resolved()
    lrs = [cfg.lr_at(s, 101) for s in range(101)]
    assert lrs[:51] == [1e-2] * 51 and math.isclose(lrs[100], 1e-4)
    assert all(a > b for a, b in zip(lrs[50:], lrs[51:]))
    assert tiny_config(recipe="public", lr=None).resolved().lr_at(2, 10) == 1e-4


def test_cosine_lr_schedule():
    cfg = tiny_config(recipe="c3d", lr=None).resolved()
    assert cfg.lr_at(0, 11) == 3e-4 and math.isclose(cfg.lr_at(10, 11), 1e-7)
    assert math.isclose(cfg.lr_at(5, 11), (3e-4 + 1e-7) / 2)
    lrs = [cfg.lr_at(s, 11) for s in range(11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert cfg.amsgrad is True and cfg.weight_decay == 3e-5


class _Clock:
    """A monotonic clock that advances 1/64 s per reading: one training step = 1/64 s, exactly."""

    def __init__(self):
        self.t = 0.0

    def monotonic(self) -> float:
        now, self.t = self.t, self.t + 1 / 64
        return now


@pytest.mark.parametrize("limit", ["max_steps", "epochs", "time"])
def test_schedule_follows_the_runs_real_length(tmp_path, monkeypatch, limit):
    """Whatever ends the run, the learning rate reaches lr_min at its last step (paper recipe). The time budget
    (0.5 s) runs on a fake clock, so the measured step rate does not depend on the machine's load."""
    import mddose.train.trainer as trainer_module

    ds = DictDataset(n=8)
    over = {"max_steps": {"epochs": 100, "max_steps": 12}, "epochs": {"epochs": 3},
            "time": {"epochs": 10_000, "time_budget_s": 0.5}}[limit]
    if limit == "time":
        monkeypatch.setattr(trainer_module, "time", _Clock())
    cfg = tiny_config(recipe="paper", lr=1e-3, lr_min=1e-5, batch_size=2, **over)
    tr = Trainer(cfg, tiny_model(), ds, tmp_path, progress=False)
    tr.fit()
    rows = (tmp_path / "logs" / "train.csv").read_text().splitlines()[1:]
    lrs = [float(r.split(",")[3]) for r in rows]
    assert lrs[0] == 1e-3
    assert math.isclose(lrs[-1], 1e-5)
    if limit == "time":   # one step = 1/64 s on the fake clock: 0.5 s hold 32 steps (the first 2 are not timed)
        assert tr.schedule_steps == tr.step == len(lrs) == 32
        assert json.loads((tmp_path / "last" / "train_state.json").read_text())["state"]["schedule_steps"] == 32


class _SlowStartClock(_Clock):
    """The first two steps take 1 s each (warm-up), every later one 1/64 s."""

    def monotonic(self) -> float:
        now = self.t
        self.t += 1.0 if self.t < 2.0 else 1 / 64
        return now


def test_time_budget_estimate_ignores_slow_first_steps(tmp_path, monkeypatch):
    """Two slow warm-up steps must not make the run stop early: 4 s = 2 s warm-up + 2 s of 1/64-s steps = 130
    steps (an estimate that timed the warm-up would have planned 18 steps and left most of the budget unused)."""
    import mddose.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "time", _SlowStartClock())
    cfg = tiny_config(recipe="paper", lr=1e-3, lr_min=1e-5, batch_size=2, epochs=10_000, time_budget_s=4.0)
    tr = Trainer(cfg, tiny_model(), DictDataset(n=8), tmp_path, progress=False)
    tr.fit()
    assert 125 <= tr.schedule_steps <= 131 and tr.step == tr.schedule_steps


@pytest.mark.parametrize("bad", [{"recipe": "fast"}, {"epochs": 0}, {"ema_decay": 1.0}, {"lr_schedule": "cos"}])
def test_bad_config_values(bad):
    with pytest.raises(MddoseError):
        tiny_config(**bad).resolved()


BUILTIN_CONFIGS = sorted(p.stem for p in builtin_config("demo").parent.glob("*.json"))


@pytest.mark.parametrize("name", BUILTIN_CONFIGS)
def test_shipped_configs_load(name):
    from mddose.models import available_models

    cfg = load_train_config(builtin_config(name)).resolved()
    assert cfg.model in available_models() and cfg.epochs >= 1
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ---------------------------------------------------------------------------- integration (other helpers' code)
def _integration_available():
    """The slice dataset, the phantoms and md-dose are part of the package: a failed import is a failure."""
    import mddose.data.inputs.slices  # noqa: F401
    import mddose.data.phantom  # noqa: F401
    from mddose.models.registry import available_models
    assert "md-dose" in available_models()


def test_phantom_training_end_to_end(tmp_path):
    _integration_available()
    from mddose.diffusion import sample
    from mddose.train.checkpoint import load_checkpoint
    from mddose.train.trainer import train
    cfg = TrainConfig(model="md-dose", preset="tiny", inputs={"size": 32},
                      data=DataConfig(phantoms={"n": 2, "seed": 0, "size": 32, "val": 1}, val_max_slices=2),
                      epochs=1, batch_size=4, max_steps=2, val_steps=2, device="cpu")
    best = train(cfg, tmp_path / "run", progress=False)
    assert best == tmp_path / "run" / "best"
    b = load_checkpoint(best)
    assert b.slice_config.size == 32 and b.meta["step"] == 2 and not b.model.training
    mean, std = sample(b.model, b.diffusion, torch.zeros(1, b.slice_config.channels, 32, 32), steps=2, samples=2)
    assert mean.shape == (1, 1, 32, 32) and torch.isfinite(mean).all()
    with pytest.raises(MddoseError, match="--resume"):
        train(cfg, tmp_path / "run", progress=False)
    val = (tmp_path / "run" / "logs" / "val.csv").read_text().splitlines()
    assert len(val) == 2 and float(val[1].split(",")[2]) >= 0


def test_cli_train_errors_are_one_line(tmp_path, capsys):
    from mddose.cli.main import main
    assert main(["train", "--config", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")]) == 2
    assert "config file not found" in capsys.readouterr().err
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"bogus": 1}))
    assert main(["train", "--config", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "bogus" in capsys.readouterr().err


def test_cli_train_phantoms(tmp_path, capsys):
    _integration_available()
    from mddose.cli.main import main
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"model": "md-dose", "preset": "tiny", "slices": {"size": 32},
                             "data": {"phantoms": {"n": 1, "size": 32, "val": 0}}, "batch_size": 4,
                             "epochs": 5, "device": "cpu"}))
    out = tmp_path / "o"
    assert main(["train", "--config", str(p), "--out", str(out), "--max-steps", "1", "--no-progress"]) == 0
    assert "best checkpoint" in capsys.readouterr().out and (out / "last" / "model.safetensors").is_file()
    assert main(["train", "--config", str(p), "--out", str(out), "--max-steps", "2", "--no-progress",
                 "--resume"]) == 0
    assert json.loads((out / "last" / "config.json").read_text())["step"] == 2
