"""The one device picker: training and prediction refuse a bad device name alike, in one line."""

from __future__ import annotations

import pytest
import torch

from mddose.cli.main import main
from mddose.errors import MddoseError
from mddose.utils.device import pick_device


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "meta", "tpu"])
def test_a_bad_device_is_one_line_naming_the_option(name):
    with pytest.raises(MddoseError, match=f"^--device: (unknown|unsupported) device '{name}'") as e:
        pick_device(name)
    assert "\n" not in str(e.value)


def test_auto_and_cpu():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("command", ["train", "predict"])
def test_train_and_predict_refuse_gpu_alike(command, tmp_path, capsys):
    (tmp_path / "in").mkdir()                     # not tmp_path itself: an --out inside --input is refused
    args = {"train": ["train", "--config", "demo", "--out", str(tmp_path / "run"), "--device", "gpu"],
            "predict": ["predict", "--checkpoint", "openkbp-small", "--input", str(tmp_path / "in"), "--out",
                        str(tmp_path / "pred"), "--device", "gpu"]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown device 'gpu' (auto | cpu | cuda | cuda:N)" in err, err
    assert not (tmp_path / "run").exists()
