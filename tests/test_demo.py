"""``mddose demo`` end to end at toy scale (seconds of training): every output is written and usable."""

from __future__ import annotations

import json

import pytest

from mddose.cli.main import main
from mddose.data.sources import PhantomSplit
from mddose.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_writes_results_and_usable_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    cfg = DemoConfig(phantoms=PhantomSplit(train=2, val=1, test=1), train_steps=3, steps=2, samples=2)
    run_demo(out, config=cfg, progress=False)
    info = json.loads((out / "summary.json").read_text())
    assert info["patients"] == ["pt_1"] and info["train_steps"] == 3 and info["train_seconds"] > 0
    assert "trained for 3 steps on this machine" in (out / "summary.md").read_text()
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


def test_demo_rejects_bad_train_steps(capsys):
    assert main(["demo", "--train-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "--train-steps must be >= 1" in err and err.count("\n") == 1


def test_demo_trains_a_fixed_number_of_steps():
    """The same model on every machine: the shipped demo config bounds training by steps, not by time."""
    from mddose.train.config import builtin_config, load_train_config

    cfg = load_train_config(builtin_config("demo"))
    assert cfg.time_budget_s is None and cfg.max_steps == 600
    assert DemoConfig().train_steps is None and DemoConfig().phantoms.seeds("test") == range(18, 22)


def test_demo_force_keeps_the_previous_results_until_the_new_ones_are_complete(tmp_path, monkeypatch):
    import mddose.train.trainer as trainer
    from mddose.errors import MddoseError

    out = tmp_path / "demo"
    out.mkdir()
    (out / "summary.md").write_text("the previous demo")

    def broken(*a, **k):
        raise RuntimeError("killed in training")

    monkeypatch.setattr(trainer, "train", broken)
    cfg = DemoConfig(phantoms=PhantomSplit(train=1, val=0, test=1, size=32, seed=0), train_steps=1)
    with pytest.raises(RuntimeError, match="killed in training"):
        run_demo(out, config=cfg, force=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]           # put back, nothing left beside it
    assert (out / "summary.md").read_text() == "the previous demo"
    (tmp_path / ".demo.mddose-previous").mkdir()                          # left by a killed --force run
    with pytest.raises(MddoseError, match="was interrupted"):
        run_demo(out, config=cfg, force=True, progress=False)
    assert (out / "summary.md").read_text() == "the previous demo"
