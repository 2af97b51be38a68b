"""Checkpoints: round trip without pickle, validation errors, optimizer/RNG state round trips."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from mddose.errors import MddoseError
from mddose.train.checkpoint import (FILES, load_checkpoint, load_optimizer_state, optimizer_state, rng_state,
                                     set_rng_state)
from mddose.train.trainer import Trainer
from tests.train.test_trainer import DictDataset, tiny_config, tiny_model  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ckpt(tmp_path):
    """A 2-step checkpoint of the test-tiny model (registered), and its trainer."""
    tr = Trainer(tiny_config(epochs=1, max_steps=2), tiny_model(), DictDataset(n=8), tmp_path / "run", progress=False)
    tr.fit()
    return tmp_path / "run" / "last", tr


def test_round_trip_loads_ema_weights_in_eval_mode(ckpt):
    path, tr = ckpt
    assert sorted(p.name for p in path.iterdir()) == sorted(FILES)
    b = load_checkpoint(path, raw=True)
    assert not b.model.training and b.meta["step"] == 2 and b.meta["format_version"] == 1
    assert b.model_config == tr.model.config and b.train_config == tr.cfg
    for k, v in tr.ema.module.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v)
    assert any(not torch.equal(b.raw_state[k], v) for k, v in tr.ema.module.state_dict().items())
    assert b.diffusion.num_timesteps == 1000


def test_missing_file(ckpt):
    path, _ = ckpt
    (path / "ema.safetensors").unlink()
    with pytest.raises(MddoseError, match="ema.safetensors: checkpoint file missing"):
        load_checkpoint(path)


def test_missing_directory(tmp_path):
    with pytest.raises(MddoseError, match="not found"):
        load_checkpoint(tmp_path / "nope")


def _rewrite(path, cfg):
    """A deliberate, re-sealed edit of ``path/config.json`` (to reach the checks after the seal)."""
    from mddose.train.integrity import seal
    (path / "config.json").write_text(json.dumps(seal(cfg)))


def _truncate(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _randomise(f):
    f.write_bytes(np.random.default_rng(0).integers(0, 256, f.stat().st_size, dtype=np.uint8).tobytes())


def _flip_last_byte(f):
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x40
    f.write_bytes(bytes(data))


def _fifo(f):
    f.unlink()
    os.mkfifo(f)


DAMAGE = {"truncated": (_truncate, "truncated"), "random": (_randomise, "corrupt"),
          "one flipped byte": (_flip_last_byte, "SHA-256"), "fifo": (_fifo, "not a regular file")}


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "train_state.safetensors",
                                  "train_state.json"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_damaged_file_is_refused_before_any_work(ckpt, monkeypatch, name, damage):
    """A damaged file (even model.safetensors beside a valid EMA file, which prediction does not use) is
    refused by name, in one line, before the model is built; resuming refuses it too."""
    path, _ = ckpt
    fn, match = DAMAGE[damage]
    if name.endswith(".json") and damage == "random":
        match = "bytes|SHA-256|corrupt"
    fn(path / name)
    import mddose.models.registry as reg

    def no_build(*a, **k):
        raise AssertionError("the model was built before the files were checked")

    monkeypatch.setattr(reg, "build_model_from_dict", no_build)
    with pytest.raises(MddoseError, match=match) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(str(path / name)) and "\n" not in str(e.value)
    monkeypatch.undo()
    tr = Trainer(tiny_config(), tiny_model(), DictDataset(n=8), path.parent, progress=False)
    with pytest.raises(MddoseError, match=match):
        tr.resume()


def test_checksums_are_recorded_and_the_training_state_is_optional_for_prediction(ckpt):
    path, _ = ckpt
    files = json.loads((path / "config.json").read_text())["files"]
    assert sorted(files) == sorted(set(FILES) - {"config.json"})
    import hashlib
    for name, rec in files.items():
        data = (path / name).read_bytes()
        assert rec == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    for name in ("train_state.safetensors", "train_state.json"):
        (path / name).unlink()
    assert load_checkpoint(path).meta["step"] == 2


def test_a_file_missing_from_the_record_is_refused(ckpt):
    """A file the record does not list (e.g. copied in from another checkpoint) is not trusted."""
    path, _ = ckpt
    cfg = json.loads((path / "config.json").read_text())
    del cfg["files"]["train_state.safetensors"]
    _rewrite(path, cfg)
    with pytest.raises(MddoseError, match="train_state.safetensors: file is not listed"):
        load_checkpoint(path)
    cfg["files"] = {"model.safetensors": {"size": "big"}}
    _rewrite(path, cfg)
    with pytest.raises(MddoseError, match="config.json: malformed 'files' record"):
        load_checkpoint(path)


def test_old_checkpoint_without_checksums_loads_but_is_header_checked(ckpt, caplog):
    path, tr = ckpt
    cfg = json.loads((path / "config.json").read_text())
    del cfg["files"], cfg["config_sha256"]          # as written before checksums and seals existed
    (path / "config.json").write_text(json.dumps(cfg))
    b = load_checkpoint(path)
    assert all(torch.equal(b.model.state_dict()[k], v) for k, v in tr.ema.module.state_dict().items())
    assert "without checksums" in caplog.text
    _truncate(path / "model.safetensors")
    with pytest.raises(MddoseError, match="model.safetensors: corrupt or truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("which", ["model", "ema"])
def test_nan_weights_are_refused(tmp_path, which):
    from mddose.train.checkpoint import checkpoint_config, save_checkpoint
    good, bad = tiny_model(), tiny_model()
    with torch.no_grad():
        bad.out.bias.fill_(float("nan") if which == "ema" else float("inf"))
    conf = checkpoint_config(good, data_config={"slice_config": {}}, train_config={}, diffusion={}, step=0,
                             epoch=0)
    save_checkpoint(tmp_path / "c", model=bad if which == "model" else good, ema=bad if which == "ema" else good,
                    config=conf)
    with pytest.raises(MddoseError, match=f"{which}.safetensors: weights contain NaN or infinite values"):
        load_checkpoint(tmp_path / "c")


def test_checkpoint_of_another_model(ckpt):
    path, _ = ckpt
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"]["width"] = 8
    _rewrite(path, cfg)
    with pytest.raises(MddoseError, match="do not match the model"):
        load_checkpoint(path)
    with pytest.raises(MddoseError, match="do not match the model"):
        load_checkpoint(path, model=torch.nn.Linear(2, 2))


@pytest.mark.parametrize("change,match", [({"format_version": 99}, "version 99 is not supported"),
                                          ({"format": "other"}, "not an mddose checkpoint")])
def test_other_format_version(ckpt, change, match):
    path, _ = ckpt
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(change)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MddoseError, match=match):
        load_checkpoint(path)


def test_resume_needs_train_state(ckpt, tmp_path):
    path, _ = ckpt
    (path / "train_state.json").unlink()
    tr = Trainer(tiny_config(), tiny_model(), DictDataset(n=8), path.parent, progress=False)
    with pytest.raises(MddoseError, match="train_state.json"):
        tr.resume()


def test_no_pickle_in_checkpoint(ckpt):
    path, _ = ckpt
    for f in path.iterdir():
        head = f.read_bytes()[:2]
        assert head != b"\x80\x02" and not f.read_bytes().startswith(b"PK")  # pickle / torch zip


def test_optimizer_state_round_trip():
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(3):
        m(torch.randn(4, 3)).square().sum().backward()
        opt.step()
    tensors, js = optimizer_state(opt)
    json.dumps(js)
    opt2 = torch.optim.Adam(m.parameters(), lr=5.0)
    load_optimizer_state(opt2, tensors, js)
    assert opt2.param_groups[0]["lr"] == 1e-2
    for p in m.parameters():
        for k, v in opt.state[p].items():
            assert torch.equal(opt2.state[p][k], v)


def test_rng_state_round_trip():
    g = torch.Generator().manual_seed(3)
    tensors, js = rng_state(g)
    json.loads(json.dumps(js))
    a = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=g))
    torch.manual_seed(1), np.random.seed(1), random.seed(1), g.manual_seed(1)
    set_rng_state(tensors, json.loads(json.dumps(js)), g)
    b = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=g))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2] and torch.equal(a[3], b[3])
