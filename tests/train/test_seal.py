"""A checkpoint is one sealed thing: config.json is covered by its own seal (``config_sha256``), an edit or a
flipped bit is refused in one line naming the file, ``mddose export --reseal`` re-seals a deliberate edit, and
an edited kind or model name is a mismatch at load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mddose.cli.main import main
from mddose.errors import MddoseError
from mddose.train.checkpoint import load_checkpoint
from mddose.train.integrity import SEAL_KEY, check_seal, config_digest, seal
from tests.train.test_checkpoint import ckpt  # noqa: F401 - fixture: a 2-step test-tiny checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(path) -> dict:
    return json.loads((path / "config.json").read_text())


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


EDITS = {"step": lambda c: c.update(step=c["step"] + 1),
         "model width": lambda c: c["model"].update(width=8),
         "a weight's checksum": lambda c: c["files"]["ema.safetensors"].update(
             sha256=c["files"]["model.safetensors"]["sha256"]),
         "a new key": lambda c: c.update(note="mine"),
         "kind": lambda c: c.update(kind="regression")}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_config_is_refused_with_the_way_to_reseal(ckpt, edit):  # noqa: F811
    path, _ = ckpt
    cfg = _cfg(path)
    EDITS[edit](cfg)
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    with pytest.raises(MddoseError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(str(path / "config.json")) and "\n" not in msg
    assert "does not match the checksum sealed" in msg and "mddose export CHECKPOINT NEW --reseal" in msg


def _positions(data: bytes) -> dict[str, int]:
    """Byte positions of a few kinds of content in a config.json."""
    text = data.decode()
    return {"a digit of step": text.index('"step": ') + len('"step": '),
            "a letter of a key": text.index('"kind"') + 2,
            "a hex digit of a checksum": text.index('"sha256": "') + len('"sha256": "') + 5,
            "the seal itself": text.index(f'"{SEAL_KEY}": "') + len(SEAL_KEY) + 6,
            "whitespace": text.index("\n") + 1,
            "a brace": 0}


@pytest.mark.parametrize("where", list(_positions(b'{\n "config_sha256": "0", "kind": 1, "sha256": "0123456", '
                                                  b'"step": 1}')))
@pytest.mark.parametrize("bit", [0x01, 0x20])
def test_a_flipped_bit_anywhere_is_refused_in_one_line(ckpt, where, bit):  # noqa: F811
    path, _ = ckpt
    data = bytearray((path / "config.json").read_bytes())
    data[_positions(bytes(data))[where]] ^= bit
    (path / "config.json").write_bytes(bytes(data))
    with pytest.raises(MddoseError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(str(path / "config.json")) and "\n" not in str(e.value)


def test_a_layout_only_change_is_not_an_edit(ckpt):  # noqa: F811
    path, tr = ckpt
    (path / "config.json").write_text(json.dumps(_cfg(path), indent=4, sort_keys=False))
    assert load_checkpoint(path).meta["step"] == 2


def test_export_reseals_a_deliberate_edit_and_still_checks_the_weights(ckpt, tmp_path, capsys):  # noqa: F811
    path, tr = ckpt
    cfg = _cfg(path)
    cfg["predict"] = {"steps": 3}                       # a deliberate edit: the recommended sampler steps
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    assert main(["export", str(path), str(tmp_path / "e")]) == 2
    assert "--reseal" in _one_line(capsys)
    assert not (tmp_path / "e").exists()
    assert main(["export", str(path), str(tmp_path / "e"), "--reseal"]) == 0
    out = _cfg(tmp_path / "e")
    assert out["predict"] == {"steps": 3} and out[SEAL_KEY] == config_digest(out)
    b = load_checkpoint(tmp_path / "e")
    assert all(torch.equal(b.model.state_dict()[k], v) for k, v in tr.ema.module.state_dict().items())
    data = bytearray((path / "ema.safetensors").read_bytes())     # --reseal never accepts damaged weights
    data[-1] ^= 0x40
    (path / "ema.safetensors").write_bytes(bytes(data))
    assert main(["export", str(path), str(tmp_path / "e2"), "--reseal"]) == 2
    assert "ema.safetensors" in _one_line(capsys) and not (tmp_path / "e2").exists()


@pytest.mark.parametrize("edit, words", [
    ({"kind": "regression"}, "kind 'regression' does not match the model 'test-tiny', a 2D diffusion model"),
    ({"model": "c3d"}, "kind 'diffusion' does not match the model 'c3d', a 3D regression model"),
    ({"model": "no-such-model"}, "model 'no-such-model' is not a model of this mddose"),
])
def test_an_edited_kind_or_model_name_is_a_mismatch_at_load(ckpt, tmp_path, capsys, edit, words):  # noqa: F811
    """Even re-sealed, an edited kind or model name is refused at load (one line), never per patient."""
    path, _ = ckpt
    cfg = _cfg(path)
    if "model" in edit:
        cfg["model"]["model"] = edit["model"]
    else:
        cfg.update(edit)
    (path / "config.json").write_text(json.dumps(seal(cfg)))
    with pytest.raises(MddoseError, match=words):
        load_checkpoint(path)
    assert main(["export", str(path), str(tmp_path / "e"), "--reseal"]) == 2
    assert words in _one_line(capsys)
    assert main(["data", "phantom", "--n", "2", "--out", str(tmp_path / "ph"), "--size", "64"]) == 0
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(path), "--input", str(tmp_path / "ph"),
                 "--out", str(tmp_path / "pred")]) == 2
    line = _one_line(capsys)
    assert words in line and "pt_" not in line and not (tmp_path / "pred").exists()


def test_the_shipped_checkpoint_is_sealed_with_its_original_weights():
    from mddose.predict.shipped import shipped_checkpoints
    from mddose.train.integrity import sha256_file

    path = shipped_checkpoints()["openkbp-small"]
    cfg = _cfg(path)
    assert check_seal(cfg, path / "config.json") is True
    assert sha256_file(path / "ema.safetensors") == cfg["files"]["ema.safetensors"]["sha256"] == \
        "60469fb1b9a86194a5532f93734455e26c39e09b9c651d551f5cfa5ca631f9ad"   # the weights shipped since 4dfa485


def test_an_unsealed_older_checkpoint_loads_with_a_warning(ckpt, tmp_path, caplog):  # noqa: F811
    path, _ = ckpt
    old = tmp_path / "old"
    shutil.copytree(path, old)
    cfg = _cfg(old)
    del cfg[SEAL_KEY]
    (old / "config.json").write_text(json.dumps(cfg))
    assert load_checkpoint(old).meta["step"] == 2
    assert "without a seal" in caplog.text
