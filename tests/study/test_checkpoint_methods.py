"""Study methods that are predicted with an existing checkpoint (e.g. the prior dose): no training, scored as rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mddose.cli.main import main


def prior_checkpoint(folder: Path, targets=("PTV",)) -> Path:
    """A ``prior``-kind checkpoint (the prior dose of the phantoms' target)."""
    from mddose.kinds.prior import PriorDoseConfig
    from mddose.train.checkpoint import FORMAT, FORMAT_VERSION

    folder.mkdir(parents=True)
    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "prior", "export": "prediction",
           "model": {"model": "prior-dose"}, "prior_config": PriorDoseConfig(targets=targets).to_dict()}
    from mddose.train.integrity import seal
    (folder / "config.json").write_text(json.dumps(seal(cfg)))
    return folder


def _study(ckpt: Path, **over) -> dict:
    d = {"name": "with-prior", "data": {"phantoms": {"train": 2, "val": 0, "test": 2, "size": 32, "seed": 3}},
         "budget": {"steps": 2}, "reference": "Prior dose", "predict": {"tta": True},
         "methods": [{"name": "Prior dose", "checkpoint": str(ckpt)},
                     {"name": "C3D", "model": "c3d", "preset": "tiny", "train": {"recipe": "c3d", "val_every": 0}}]}
    d.update(over)
    return d


def test_checkpoint_method_is_predicted_not_trained(tmp_path):
    ckpt = prior_checkpoint(tmp_path / "prior")
    (tmp_path / "s.json").write_text(json.dumps(_study(ckpt)))
    assert main(["study", "--config", str(tmp_path / "s.json"), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    study = json.loads((tmp_path / "out" / "study.json").read_text())
    prior = study["methods"]["Prior dose"]
    assert prior["status"] == "done" and prior["stages"]["train"]["steps"] == 0
    assert prior["stages"]["train"]["pretrained"] == str(ckpt)
    assert len(prior["stages"]["predict"]["patients"]) == 2
    assert 0 < prior["stages"]["evaluate"]["dose_score"] < 30
    assert study["methods"]["C3D"]["stages"]["train"]["steps"] == 2
    table = (tmp_path / "out" / "table1.md").read_text()
    assert "Prior dose (reference)" in table and "| C3D |" in table
    assert "computed (no network)" in (tmp_path / "out" / "table2.md").read_text()
    assert "Prior dose" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize("method, match", [
    ({"name": "X", "model": "c3d", "checkpoint": "prior-dose"}, "needs either 'model'"),
    ({"name": "X"}, "needs either 'model'"),
    ({"name": "X", "checkpoint": "prior-dose", "train": {"lr": 1.0}}, "takes no 'train'"),
    ({"name": "X", "checkpoint": "no-such-model"}, "no shipped checkpoint named 'no-such-model'"),
    ({"name": "X", "checkpoint": 3}, "must be strings"),
])
def test_bad_checkpoint_methods_are_one_line(tmp_path, capsys, method, match):
    d = _study(Path("prior-dose"))
    d["methods"][0] = method
    d["reference"] = "C3D"
    (tmp_path / "s.json").write_text(json.dumps(d))
    rc = main(["study", "--config", str(tmp_path / "s.json"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and err.count("\n") == 1 and not (tmp_path / "out").exists()
