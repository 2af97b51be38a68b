"""Every CLI command fed malformed options and configs (issue 20): wrong types, NaN, inf, negative, huge, empty,
unknown keys. Each case must end in exit 2 with one line naming the option or key, no traceback, and nothing
trained or written first (the working folder, where every output of the case would go, is unchanged).

In-process calls of the CLI's ``main`` (nothing is trained: each case is refused before any work)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from mddose.cli.main import main
from mddose.predict.shipped import shipped_checkpoints

NAN, INF = math.nan, math.inf

#: a tiny valid train config (the cases change one thing); phantoms generated in memory
TRAIN = {"model": "md-dose", "preset": "tiny", "slices": {"size": 32}, "device": "cpu", "batch_size": 2,
         "val_every": 0, "data": {"phantoms": {"n": 1, "size": 32, "val": 0}}}
TRAIN_3D = {"model": "c3d", "preset": "tiny", "device": "cpu", "batch_size": 1, "val_every": 0,
            "data": {"phantoms": {"n": 1, "size": 32, "val": 0}}}
#: a tiny valid study config
STUDY = {"name": "unit", "data": {"phantoms": {"train": 1, "val": 0, "test": 1, "size": 32, "seed": 3}},
         "budget": {"steps": 1}, "reference": "MD-Dose", "predict": {"steps": 2, "tta": True},
         "methods": [{"name": "MD-Dose", "model": "md-dose", "preset": "tiny",
                      "train": {"batch_size": 2, "slices": {"size": 32}, "val_every": 0}},
                     {"name": "C3D", "model": "c3d", "preset": "tiny", "train": {"recipe": "c3d", "val_every": 0}}]}


def _set(d: dict, path: str, value) -> dict:
    """A deep copy of ``d`` with ``path`` (``a.b.0.c``; ``-`` deletes) set to ``value``."""
    d = json.loads(json.dumps(d))
    *head, last = path.split(".")
    cur = d
    for k in head:
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value
    return d


def _train(path: str, value, base=TRAIN) -> tuple:
    return ("train", _set(base, path, value))


def _study(path: str, value) -> tuple:
    return ("study", _set(STUDY, path, value))


# (id, argv with {cfg} / {ckpt} / {pt} placeholders or a (kind, config) to write as {cfg}, text the line must hold)
CASES = [
    # ------------------------------------------------------------------ train
    ("train-lr-nan", _train("lr", NAN), "lr must be a finite number"),
    ("train-lr-inf", _train("lr", INF), "lr must be a finite number"),
    ("train-lr-list", _train("lr", [1]), "lr must be a number"),
    ("train-batch-string", _train("batch_size", "8"), "batch_size must be an integer"),
    ("train-epochs-negative", _train("epochs", -1), "epochs must be >= 1"),
    ("train-unknown-key", _train("colour", "blue"), "unknown key(s) colour"),
    ("train-model-list", _train("model", ["md-dose"]), "model must be a string"),
    ("train-recipe-object", _train("recipe", {"a": 1}), "recipe must be a string"),
    ("train-data-train-empty-list", _train("data", {"train": []}), "data.train must be a path"),
    ("train-phantoms-huge", _train("data.phantoms.n", 10**9), "data.phantoms.n 1000000000"),
    ("train-phantoms-nan", _train("data.phantoms.size", NAN), "data.phantoms.size must be a finite number"),
    ("train-slices-size-huge", _train("slices.size", 100000), "size 100000 does not fit in memory"),
    ("train-volume-size-huge", _train("volume", {"size": 100000}, TRAIN_3D), "size 100000 does not fit in memory"),
    ("train-slices-on-3d", _train("slices", {"size": 32}, TRAIN_3D), "'slices' is for 2D diffusion models"),
    ("train-roi-names-nested", _train("slices.targets", [["PTV"]]), "targets must be a list of ROI names"),
    ("train-overrides-nested", _train("model_overrides", {"depths": {"a": 1}}), "depths"),
    ("train-max-minutes-nan", ["train", "--config", "{cfg}", "--max-minutes", "nan"], "--max-minutes must be > 0"),
    ("train-max-minutes-inf", ["train", "--config", "{cfg}", "--max-minutes", "inf"], "--max-minutes must be > 0"),
    ("train-max-steps-zero", ["train", "--config", "{cfg}", "--max-steps", "0"], "--max-steps must be >= 1"),
    ("train-epochs-word", ["train", "--config", "{cfg}", "--epochs", "ten"], "argument --epochs"),
    ("train-config-missing", ["train", "--config", "nope.json", "--out", "o"], "nope.json"),
    ("train-config-empty", ("train", ""), "not valid JSON"),
    # ------------------------------------------------------------------ predict
    ("predict-eta-nan", ["predict", "--checkpoint", "{ckpt}", "--input", "{pt}", "--out", "o", "--eta", "nan"],
     "--eta: eta must be a finite number"),
    ("predict-eta-inf", ["predict", "--checkpoint", "{ckpt}", "--input", "{pt}", "--out", "o", "--eta", "inf"],
     "--eta: eta must be a finite number"),
    ("predict-eta-negative", ["predict", "--checkpoint", "{ckpt}", "--input", "{pt}", "--out", "o", "--eta", "-1"],
     "--eta: eta must be ≥ 0"),
    ("predict-steps-zero", ["predict", "--checkpoint", "{ckpt}", "--input", "{pt}", "--out", "o", "--steps", "0"],
     "--steps: steps must be ≥ 1"),
    ("predict-samples-negative", ["predict", "--checkpoint", "{ckpt}", "--input", "{pt}", "--out", "o",
                                  "--samples", "-2"], "--samples: samples must be ≥ 1"),
    ("predict-sampler-unknown", ["predict", "--checkpoint", "{ckpt}", "--input", "{pt}", "--out", "o",
                                 "--sampler", "euler"], "--sampler: sampler must be one of"),
    ("predict-tta-on-2d", ["predict", "--checkpoint", "{ckpt}", "--input", "{pt}", "--out", "o", "--no-tta"],
     "--no-tta: only for 3D regression models"),
    ("predict-batch-zero", ["predict", "--checkpoint", "{ckpt}", "--input", "{pt}", "--out", "o", "--batch", "0"],
     "--batch"),
    ("predict-steps-float", ["predict", "--checkpoint", "{ckpt}", "--input", "{pt}", "--out", "o", "--steps", "1.5"],
     "argument --steps"),
    ("predict-format-unknown", ["predict", "--checkpoint", "{ckpt}", "--input", "{pt}", "--out", "o",
                                "--format", "png"], "argument --format"),
    ("predict-checkpoint-missing", ["predict", "--checkpoint", "nope", "--input", "{pt}", "--out", "o"], "nope"),
    # ------------------------------------------------------------------ evaluate, compare, report
    ("evaluate-reference-missing", ["evaluate", "--reference", "nope", "--prediction", "{pt}"], "nope"),
    ("evaluate-prediction-missing", ["evaluate", "--reference", "{pt}", "--prediction", "nope"], "nope"),
    ("compare-test-unknown", ["compare", "{pt}", "--reference", "{pt}", "--test", "z"], "argument --test"),
    ("compare-names-count", ["compare", "{pt}", "{pt}", "--reference", "{pt}", "--names", "a"], "--names"),
    ("report-max-patients-zero", ["report", "{pt}", "--max-patients", "0"], "--max-patients"),
    ("report-max-patients-negative", ["report", "{pt}", "--max-patients", "-3"], "--max-patients"),
    ("report-max-patients-word", ["report", "{pt}", "--max-patients", "all"], "argument --max-patients"),
    # ------------------------------------------------------------------ study
    ("study-budget-fractional-steps", _study("budget", {"steps": 1.5}), "budget.steps must be an integer"),
    ("study-budget-inf-minutes", _study("budget", {"minutes": INF}), "budget.minutes must be a finite number"),
    ("study-budget-nan-minutes", _study("budget", {"minutes": NAN}), "budget.minutes must be a finite number"),
    ("study-budget-negative", _study("budget", {"minutes": -1}), "budget.minutes must be > 0"),
    ("study-budget-minutes-inf-flag", ["study", "--config", "{cfg}", "--out", "o", "--budget-minutes", "inf"],
     "--budget-minutes must be a number"),
    ("study-budget-minutes-zero-flag", ["study", "--config", "{cfg}", "--out", "o", "--budget-minutes", "0"],
     "--budget-minutes must be > 0"),
    ("study-name-number", _study("name", 5), "name must be a string"),
    ("study-name-empty", _study("name", ""), "name must be a non-empty string"),
    ("study-description-object", _study("description", {"a": 1}), "description must be a string"),
    ("study-seed-string", _study("seed", "x"), "seed must be an integer"),
    ("study-seed-fraction", _study("seed", 1.5), "seed must be an integer"),
    ("study-method-name-list", _study("methods.0.name", ["MD-Dose"]), "methods[0].name must be a non-empty string"),
    ("study-method-name-pipe", _study("methods.1.name", "C3D | tiny"), "methods[1].name 'C3D | tiny' may not"),
    ("study-method-name-newline", _study("methods.1.name", "C3D\ntiny"), "methods[1].name"),
    ("study-method-name-html", _study("methods.1.name", "<b>C3D</b>"), "methods[1].name '<b>C3D</b>' may not"),
    ("study-method-model-number", _study("methods.1.model", 3), "methods[1].model must be a string"),
    ("study-method-preset-list", _study("methods.1.preset", ["tiny"]), "methods[1].preset must be a string"),
    ("study-method-tables-string", _study("methods.1.tables", "table1"), "methods[1].tables must be a list"),
    ("study-method-train-lr-nan", _study("methods.1.train.lr", NAN), "methods[1].train.lr must be a finite"),
    ("study-method-slices-on-3d", _study("methods.1.train.slices", {"size": 32}),
     "'slices' is for 2D diffusion models"),
    ("study-method-volume-huge", _study("methods.1.train.volume", {"size": 100000}), "size 100000 does not fit"),
    ("study-predict-steps-zero", _study("predict.steps", 0), "predict.steps: steps must be ≥ 1"),
    ("study-predict-eta-nan", _study("predict.eta", NAN), "predict.eta must be a finite number"),
    ("study-predict-sampler-unknown", _study("predict.sampler", "euler"), "predict.sampler: sampler must be one of"),
    ("study-predict-tta-string", _study("predict.tta", "yes"), "predict.tta: tta must be like True"),
    ("study-data-train-number", _study("data", {"train": 3, "test": "t"}), "data.train must be a path"),
    ("study-data-test-list", _study("data", {"train": "t", "test": ["t"]}), "data.test must be a path"),
    ("study-data-missing-folder", _study("data", {"train": "nope-train", "test": "nope-test"}), "nope-"),
    ("study-phantoms-huge", _study("data.phantoms.size", 100000), "data.phantoms.size 100000"),
    ("study-unknown-key", _study("colour", "blue"), "unknown key(s) colour"),
    ("study-methods-empty", _study("methods", []), "'methods' must be a non-empty list"),
    ("study-config-empty", ("study", ""), "not valid JSON"),
    # ------------------------------------------------------------------ export
    ("export-sampler-unknown", ["export", "{ckpt}", "o", "--sampler", "euler"], "--sampler: sampler must be one of"),
    ("export-steps-zero", ["export", "{ckpt}", "o", "--steps", "0"], "--steps: steps must be ≥ 1"),
    ("export-steps-negative", ["export", "{ckpt}", "o", "--steps", "-4"], "--steps: steps must be ≥ 1"),
    ("export-steps-word", ["export", "{ckpt}", "o", "--steps", "many"], "argument --steps"),
    ("export-card-missing", ["export", "{ckpt}", "o", "--card", "nope.md"], "nope.md"),
    # ------------------------------------------------------------------ data
    ("data-phantom-n-zero", ["data", "phantom", "--n", "0", "--out", "o"], "--n must be between 1 and"),
    ("data-phantom-n-huge", ["data", "phantom", "--n", "100000000", "--out", "o"], "--n must be between 1 and"),
    ("data-phantom-n-word", ["data", "phantom", "--n", "two", "--out", "o"], "argument --n"),
    ("data-phantom-size", ["data", "phantom", "--n", "1", "--out", "o", "--size", "100000"], "argument --size"),
    ("data-phantom-seed-nan", ["data", "phantom", "--n", "1", "--out", "o", "--seed", "nan"], "argument --seed"),
    ("data-inspect-missing", ["data", "inspect", "nope"], "nope"),
    ("data-inspect-format", ["data", "inspect", "{pt}", "--format", "png"], "argument --format"),
    ("data-convert-to-unknown", ["data", "convert", "{pt}", "o", "--to", "png"], "argument --to"),
    ("data-convert-missing", ["data", "convert", "nope", "o", "--to", "nifti"], "nope"),
    # ------------------------------------------------------------------ bench, models, demo
    ("bench-scan-repeats-zero", ["bench", "scan", "--repeats", "0"], "argument --repeats"),
    ("bench-scan-lengths-negative", ["bench", "scan", "--lengths", "-5"], "argument --lengths"),
    ("bench-scan-max-seconds-nan", ["bench", "scan", "--max-seconds", "nan"], "argument --max-seconds"),
    ("bench-scan-max-memory-inf", ["bench", "scan", "--max-memory-gb", "inf"], "argument --max-memory-gb"),
    ("bench-io-repeats-zero", ["bench", "io", "--repeats", "0"], "argument --repeats"),
    ("bench-io-data-missing", ["bench", "io", "--data", "nope"], "nope"),
    ("bench-dataset-size-zero", ["bench", "dataset", "--size", "0"], "argument --size"),
    ("bench-dataset-data-missing", ["bench", "dataset", "--data", "nope"], "nope"),
    ("bench-model-repeats-zero", ["bench", "model", "--repeats", "0"], "argument --repeats"),
    ("bench-model-phantoms-negative", ["bench", "model", "--phantoms", "-1"], "argument --phantoms"),
    ("bench-model-data-missing", ["bench", "model", "--sections", "patient", "--data", "nope"], "--data"),
    ("bench-model-steps-no-checkpoint", ["bench", "model", "--sections", "steps"], "--checkpoint"),
    ("bench-evaluate-data-missing", ["bench", "evaluate", "--data", "nope"], "--data"),
    ("bench-gpu-train-steps-zero", ["bench", "gpu", "--train-steps", "0"], "argument --train-steps"),
    ("models-in-channels-zero", ["models", "--in-channels", "0"], "--in-channels"),
    ("models-in-channels-word", ["models", "--in-channels", "nine"], "argument --in-channels"),
    ("demo-train-steps-zero", ["demo", "--out", "o", "--train-steps", "0"], "--train-steps"),
    ("demo-train-steps-negative", ["demo", "--out", "o", "--train-steps", "-5"], "--train-steps"),
    ("demo-seed-word", ["demo", "--out", "o", "--seed", "x"], "argument --seed"),
]


def test_every_command_has_cases():
    """The table covers every command of ``mddose --help`` (and every data/bench sub-command)."""
    from mddose.cli.bench import BENCHMARKS
    from mddose.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    covered = {argv[0] if isinstance(argv, list) else argv[0] for _, argv, _ in CASES}
    assert set(sub.choices) <= covered
    bench = {argv[1] for _, argv, _ in CASES if isinstance(argv, list) and argv[0] == "bench"}
    data = {argv[1] for _, argv, _ in CASES if isinstance(argv, list) and argv[0] == "data"}
    assert bench == set(BENCHMARKS) and data == {"inspect", "convert", "phantom"}


@pytest.fixture(scope="module")
def patient(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("malformed") / "pt"
    assert main(["data", "phantom", "--n", "1", "--out", str(out), "--size", "64"]) == 0
    return out


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def _argv(case, tmp_path: Path, patient: Path) -> list[str]:
    if isinstance(case, tuple):                 # (command, config): written as {cfg}
        kind, cfg = case
        p = tmp_path / "config.json"
        p.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
        return [kind, "--config", str(p), "--out", "o"] + (["--no-progress"] if kind in ("train", "study") else [])
    cfg = tmp_path / "config.json"
    base = TRAIN if case[0] == "train" else STUDY
    cfg.write_text(json.dumps(base))
    ckpt = str(shipped_checkpoints()["openkbp-small"])
    return [a.replace("{cfg}", str(cfg)).replace("{ckpt}", ckpt).replace("{pt}", str(patient)) for a in case]


@pytest.mark.parametrize("argv,expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_input_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys, patient, argv,
                                                                expect):
    work = tmp_path / "work"
    work.mkdir()
    args = _argv(argv, work, patient)
    monkeypatch.chdir(work)
    before = _snapshot(work)
    try:
        rc = main(args)
    except SystemExit as exc:                   # argparse: its own one line, exit 2
        rc = exc.code
    out = capsys.readouterr()
    err = [ln for ln in out.err.splitlines() if ln.strip()]
    assert rc == 2, (rc, out.err[-2000:])
    assert "Traceback" not in out.err
    assert len(err) == 1 or (err[0].startswith("usage:") and len(err) <= 3), out.err   # argparse: usage + error
    assert expect in err[-1], err[-1]
    assert _snapshot(work) == before            # nothing trained, written or created first
