"""``mddose demo`` end to end at toy scale (seconds of training): every output is written and usable."""

from __future__ import annotations

import json

import pytest

from mddose.cli.main import main
from mddose.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_writes_results_and_usable_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    cfg = DemoConfig(n_train=2, n_val=1, n_test=1, train_minutes=0.05, steps=2, samples=2)
    run_demo(out, config=cfg, progress=False)
    info = json.loads((out / "summary.json").read_text())
    assert info["patients"] == ["pt_1"]
    assert info["dose_score"] > 0 and info["dvh_score"] > 0
    for name in ("summary.md", "dose_maps.png", "dvh.png", "report.html", "checkpoint/config.json",
                 "predictions/pt_1.nii.gz", "predictions/uncertainty/pt_1.nii.gz"):
        assert (out / name).is_file(), name
    # the checkpoint is usable by `mddose predict`
    rc = main(["predict", "--checkpoint", str(out / "checkpoint"), "--input", str(out / "phantoms"),
               "--out", str(tmp_path / "pred"), "--steps", "2"])
    assert rc == 0 and (tmp_path / "pred" / "pt_1.csv").is_file()
    # an existing results folder is never replaced silently
    capsys.readouterr()
    assert main(["demo", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "summary.json").is_file()


def test_demo_rejects_bad_minutes(capsys):
    assert main(["demo", "--minutes", "0"]) == 2
    assert "--minutes" in capsys.readouterr().err
