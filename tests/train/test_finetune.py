"""Fine-tuning (``mddose train --init``): trained weights, fresh optimizer and schedule, the first difference
named in one line, the start recorded in every checkpoint; tiny md-dose on one 32² phantom."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mddose.cli.main import main
from mddose.train.integrity import SEAL_KEY, config_digest, sha256_file

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = {"model": "md-dose", "preset": "tiny", "slices": {"size": 32},
       "data": {"phantoms": {"n": 1, "size": 32, "val": 0}}, "batch_size": 4, "epochs": 5, "device": "cpu"}


def _config(tmp_path: Path, name: str = "cfg.json", **change) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps({**CFG, **change}))
    return p


def _train(config: Path, out: Path, *extra: str) -> int:
    return main(["train", "--config", str(config), "--out", str(out), "--no-progress", *extra])


def _ema(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(ckpt / "ema.safetensors"))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A 2-step tiny md-dose run's last checkpoint."""
    tmp = tmp_path_factory.mktemp("source")
    assert _train(_config(tmp), tmp / "run", "--max-steps", "2") == 0
    return tmp / "run" / "last"


def test_init_starts_from_the_weights_with_a_fresh_optimizer_and_records_it(tmp_path, source):
    cfg = _config(tmp_path, lr=1e-9, recipe="public")      # a step that barely moves the weights
    assert _train(cfg, tmp_path / "ft", "--max-steps", "1", "--init", str(source)) == 0
    assert _train(cfg, tmp_path / "scratch", "--max-steps", "1") == 0
    src, ft, scratch = _ema(source), _ema(tmp_path / "ft" / "last"), _ema(tmp_path / "scratch" / "last")
    assert max(float((ft[k] - src[k]).abs().max()) for k in src) < 1e-5
    assert max(float((scratch[k] - src[k]).abs().max()) for k in src) > 1e-2
    meta = json.loads((tmp_path / "ft" / "last" / "config.json").read_text())
    assert meta["step"] == 1                                 # a new run: its own step count, schedule, optimizer
    from safetensors.torch import load_file
    state = load_file(str(tmp_path / "ft" / "last" / "train_state.safetensors"))
    assert {float(v) for k, v in state.items() if k.endswith(".step")} == {1.0}
    src_meta = json.loads((source / "config.json").read_text())
    assert meta["init"] == {"checkpoint": str(source), "path": str(source.resolve()), "step": 2,
                            "weights": "ema.safetensors", "weights_sha256": sha256_file(source / "ema.safetensors"),
                            "config_sha256": src_meta[SEAL_KEY]}
    assert meta[SEAL_KEY] == config_digest(meta)             # the record is sealed with the rest
    assert "init" not in json.loads((tmp_path / "scratch" / "last" / "config.json").read_text())


def test_resuming_a_fine_tuned_run_keeps_its_start(tmp_path, source):
    cfg = _config(tmp_path)
    assert _train(cfg, tmp_path / "ft", "--max-steps", "1", "--init", str(source)) == 0
    record = json.loads((tmp_path / "ft" / "last" / "config.json").read_text())["init"]
    assert _train(cfg, tmp_path / "ft", "--max-steps", "2", "--resume") == 0
    meta = json.loads((tmp_path / "ft" / "last" / "config.json").read_text())
    assert meta["step"] == 2 and meta["init"] == record


@pytest.mark.parametrize("change, named", [
    ({"preset": "small"}, "model."),
    ({"slices": {"size": 32, "ct_clip": [-500.0, 500.0]}}, "slices.ct_clip ([-1000.0, 1500.0] in the checkpoint"),
    ({"diffusion": {"prediction": "v"}}, "diffusion.prediction ('eps' in the checkpoint, 'v' in the train config)"),
    ({"model": "c3d", "slices": {}, "volume": {"size": 32}}, "kind ('diffusion' in the checkpoint, 'regression'"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line_before_any_data(tmp_path, capsys, source, change,
                                                                              named):
    assert _train(_config(tmp_path, **change), tmp_path / "ft", "--init", str(source)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit the train config" in err[0] and named in err[0], err
    assert str(source) in err[0] and "Traceback" not in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json"]       # nothing written


def test_a_training_only_change_is_allowed(tmp_path, source):
    """The loss (weighting, norm) and the recipe may change: they do not change what the weights mean."""
    cfg = _config(tmp_path, diffusion={"loss_type": "l1"}, recipe="public")
    assert _train(cfg, tmp_path / "ft", "--max-steps", "1", "--init", str(source)) == 0


@pytest.mark.parametrize("argv, words", [
    (["--resume"], "--init starts a new run from trained weights; --resume continues a run"),
    ([], "--init: no checkpoint folder and no shipped checkpoint named 'no-such-model'"),
])
def test_bad_init_arguments(tmp_path, capsys, argv, words):
    assert _train(_config(tmp_path), tmp_path / "ft", "--init", "no-such-model", *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json"]


def test_init_inside_the_output_is_refused(tmp_path, capsys, source):
    import shutil
    shutil.copytree(source, tmp_path / "ft" / "start")
    assert _train(_config(tmp_path), tmp_path / "ft", "--init", str(tmp_path / "ft" / "start")) == 2
    assert "--init checkpoint" in capsys.readouterr().err


def test_a_shipped_name_fits_its_own_config():
    """``--init openkbp-small`` with the config it was trained with (openkbp-cpu): the record names it."""
    from mddose.predict.shipped import resolve_checkpoint
    from mddose.train.config import builtin_config, load_train_config
    from mddose.train.finetune import load_init
    from mddose.train.trainer import model_config_for

    path = resolve_checkpoint("openkbp-small")
    cfg = load_train_config(builtin_config("openkbp-cpu")).resolved()
    sd, record = load_init(path, cfg, model_config_for(cfg, cfg.inputs.channels), name="openkbp-small")
    meta = json.loads((path / "config.json").read_text())
    assert record["checkpoint"] == "openkbp-small" and record["step"] == meta["step"]
    assert record["weights_sha256"] == meta["files"]["ema.safetensors"]["sha256"]
    assert record["config_sha256"] == meta[SEAL_KEY] and sd
