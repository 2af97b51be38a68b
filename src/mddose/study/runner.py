"""Running a study: for each method train → predict every test patient → evaluate; kept as it finishes.

Layout of the study directory::

    DIR/study_config.json          the config the directory belongs to (another config is refused)
    DIR/data/test/                 the test phantoms (phantom studies only)
    DIR/methods/<slug>/train/      the training run (checkpoints last/ and best/, logs)
    DIR/methods/<slug>/pred/       predicted doses of the test patients (NIfTI) + predict.json
    DIR/methods/<slug>/status.json what is finished: per stage its result, or the failure
    DIR/table1.md/.csv, table2.md, table3.md, study.json, report.html   (see :mod:`mddose.study.tables`)

Resumable: ``status.json`` is written atomically after each stage, and a stage marked done is never run
again. A method killed in training continues from its last checkpoint with the rest of its budget (the
time already spent is read from the checkpoint). A method that fails at any stage is recorded with its
error and the others go on; a re-run tries it again.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mddose.errors import MddoseError
from mddose.study.config import MethodSpec, StudyConfig
from mddose.study.state import COLUMNS, STAGES, MethodState, read_json, write_json
from mddose.utils.log import logger

EPOCHS_UNBOUNDED = 1_000_000          # the budget, not the epochs, ends every study run


# ------------------------------------------------------------------------------------------ data
@dataclass
class StudyDataPaths:
    """Where each method's data comes from: the train config's ``data`` section and the test folder."""

    train_data: Any           # mddose.train.config.DataConfig
    test_dir: Path
    test_ids: list[str]


def _names(spec: str | None) -> dict[str, Path]:
    from mddose.data.sources import list_patients

    return {} if not spec else {p.name: p.resolve() for p in list_patients(spec)[0]}


def prepare_data(cfg: StudyConfig, out: Path, *, write: bool = True) -> StudyDataPaths:
    """Test patients on disk (phantoms are written once into ``out/data/test``), overlaps refused, doses checked.

    ``write=False``: nothing is written (the phantoms' paths only): the check before the study writes anything."""
    from mddose.data.io import load_patients
    from mddose.train.config import DataConfig

    split = cfg.phantom_split()
    if split is not None:
        train = DataConfig(phantoms=split, val_max_slices=16)
        test_dir = out / "data" / "test"
        if write and not (test_dir / "done").is_file():     # test phantoms follow the train and val seeds: disjoint
            from mddose.data.phantom import write_phantoms
            seeds = split.seeds("test")
            write_phantoms(len(seeds), test_dir, seed=seeds.start, size=split.size, format="nifti", force=True)
            (test_dir / "done").write_text("ok\n")
        ids = [f"pt_{i}" for i in range(1, split.test + 1)]
        return StudyDataPaths(train, test_dir, ids)
    train_names, val_names, test_names = _names(cfg.data.train), _names(cfg.data.val), _names(cfg.data.test)
    if not train_names:
        raise MddoseError(f"study {cfg.name}: data.train holds no patient folders", cfg.data.train)
    for what, other in (("train", train_names), ("validation", val_names)):
        same = sorted(n for n, p in test_names.items() if n in other or p in set(other.values()))
        if same:
            raise MddoseError(f"study {cfg.name}: test patients overlap the {what} patients: {', '.join(same)}")
    patients, bad = load_patients(cfg.data.test)
    if bad:
        raise MddoseError(f"study {cfg.name}: unreadable test patient(s): "
                          + "; ".join(f"{i}: {m}" for i, m in bad[:3]))
    no_dose = [p.id for p in patients if p.dose is None]
    if no_dose:
        raise MddoseError(f"study {cfg.name}: test patients without dose (cannot be scored): {', '.join(no_dose)}")
    return StudyDataPaths(DataConfig(train=cfg.data.train, val=cfg.data.val), Path(cfg.data.test),
                          [p.id for p in patients])


# ------------------------------------------------------------------------------------------ stages
def _train_config(cfg: StudyConfig, m: MethodSpec, data: StudyDataPaths, seconds_left: float | None):
    """The train config of method ``m``: its settings over the study's, on the study's data and budget (the data is
    part of the parse: the input config's defaults depend on it)."""
    from mddose.train.config import TrainConfig

    d = {"seed": cfg.seed, "epochs": EPOCHS_UNBOUNDED, **m.train, "model": m.model, "preset": m.preset,
         "model_overrides": dict(m.overrides), "data": data.train_data, "max_steps": cfg.budget_steps,
         "time_budget_s": seconds_left}
    return TrainConfig.from_dict(d, where=f"study {cfg.name} method {m.name!r}")


def _elapsed_in(run: Path) -> float:
    """Training seconds already spent by a killed run (from its last checkpoint)."""
    from mddose.train.trainer import find_last

    last = find_last(run)
    if last is None:
        return 0.0
    return float(read_json(last / "train_state.json").get("state", {}).get("elapsed", 0.0))


def stage_train(cfg: StudyConfig, m: MethodSpec, data: StudyDataPaths, st: MethodState) -> dict:
    from mddose.train.trainer import find_last, train

    if not m.trained:            # predicted with an existing checkpoint: nothing to train
        from mddose.predict.shipped import resolve_checkpoint

        return {"checkpoint": str(resolve_checkpoint(m.checkpoint).resolve()), "steps": 0, "seconds_this_run": 0.0,
                "train_seconds": 0.0, "resumed": False, "pretrained": m.checkpoint, "budget": {"steps": 0}}
    run = st.dir / "train"
    resume = find_last(run) is not None
    left = None
    if cfg.budget_minutes is not None:
        left = cfg.budget_minutes * 60 - _elapsed_in(run)
    t0 = time.monotonic()
    if left is not None and left <= 0 and resume:
        best = run / "best" if (run / "best").is_dir() else find_last(run)
    else:
        best = train(_train_config(cfg, m, data, max(left, 1.0) if left is not None else None), run,
                     resume=resume, progress=False)
    best = Path(best)
    meta = read_json(best / "config.json")
    return {"checkpoint": str(best), "steps": meta.get("step"), "seconds_this_run": round(time.monotonic() - t0, 1),
            "train_seconds": round(_elapsed_in(run), 1), "resumed": resume, "budget": dict(cfg.budget)}


def _method_kind(m: MethodSpec):
    """The :class:`~mddose.kinds.base.ModelKind` of method ``m``: its model's, or its checkpoint's."""
    from mddose.kinds import get_kind
    from mddose.models import kind_of
    from mddose.predict.shipped import resolve_checkpoint

    if m.trained:
        return kind_of(m.model)
    return get_kind(read_json(resolve_checkpoint(m.checkpoint) / "config.json").get("kind", "diffusion"))


def _predict_options(cfg: StudyConfig, m: MethodSpec) -> dict:
    """The study's prediction options that the kind of method ``m`` takes."""
    kind = _method_kind(m)
    return {k: v for k, v in cfg.predict.items() if k in kind.options}


def stage_predict(cfg: StudyConfig, m: MethodSpec, data: StudyDataPaths, st: MethodState) -> dict:
    from mddose.predict import predict_to_dir

    ckpt = st.stages["train"]["checkpoint"]
    pred = st.dir / "pred"
    t0 = time.monotonic()
    done, errors = predict_to_dir(ckpt, data.test_dir, pred, fmt="nifti", force=True, progress=False,
                                  seed=cfg.seed, **_predict_options(cfg, m))
    s = time.monotonic() - t0
    return {"patients": list(done), "errors": [list(e) for e in errors], "seconds": round(s, 1),
            "seconds_per_patient": round(s / max(len(done), 1), 2)}


def stage_evaluate(cfg: StudyConfig, m: MethodSpec, data: StudyDataPaths, st: MethodState) -> dict:
    from mddose.evaluate import evaluate_predictions
    from mddose.evaluate.run import result_values

    res = evaluate_predictions(data.test_dir, st.dir / "pred")
    return {"dose_score": res.dose_score, "dvh_score": res.dvh_score, "values": result_values(res, COLUMNS),
            "errors": [list(e) for e in res.errors], "missing": list(res.missing)}


STAGE_FUNCTIONS = {"train": stage_train, "predict": stage_predict, "evaluate": stage_evaluate}


# ------------------------------------------------------------------------------------------ the study
def check_out_dir(cfg: StudyConfig, out: Path, resume: bool) -> None:
    """``out`` is empty, or holds this very study; another study there is refused (even with --resume).

    With ``resume`` the config may add methods to the saved study (every saved method unchanged, same data):
    the finished ones are kept and the new ones run.
    """
    saved = out / "study_config.json"
    if saved.is_file():
        old, new = read_json(saved), cfg.to_dict()
        if old.get("name") != cfg.name or _absolute(old.get("data")) != new["data"] or not _keeps_methods(old, new):
            raise MddoseError(f"holds a study of another config ({old.get('name', '?')}); choose another --out",
                              out)
        if old.get("methods") != new["methods"] and not resume:
            raise MddoseError("holds this study with fewer methods; use --resume to add the new ones, or choose "
                              "another --out", out)
        if old.get("budget") != cfg.to_dict()["budget"] and not resume:
            raise MddoseError("holds this study with another budget; use --resume to continue it with the new "
                              "budget, or choose another --out", out)
    elif out.exists() and any(out.iterdir()):
        raise MddoseError("exists, is not empty and holds no study (choose another --out)", out)


def _absolute(data: Any) -> Any:
    """A saved ``data`` section with its paths made absolute (configs saved before paths were absolute kept them
    relative to the directory the study ran from)."""
    import os

    if not isinstance(data, dict):
        return data

    def fix(v):
        return os.path.abspath(v) if isinstance(v, str) else [fix(x) for x in v] if isinstance(v, list) else v

    return {k: fix(v) if k in ("train", "val", "test") else v for k, v in data.items()}


def _keeps_methods(old: dict, new: dict) -> bool:
    """Every method of the saved config ``old`` is in ``new``, unchanged (``new`` may add methods)."""
    new_methods = {m.get("name"): m for m in new.get("methods", [])}
    return all(new_methods.get(m.get("name")) == m for m in old.get("methods") or [])


def run_study(cfg: StudyConfig, out: str | Path, *, resume: bool = False, only: list[str] | None = None,
              progress: bool = True) -> dict:
    """Run (or continue) the study into ``out``; returns the study record (also written as ``study.json``).

    ``only``: display names of the methods to run now (the tables cover every finished method).
    """
    from mddose.study.tables import write_tables

    out = Path(out)
    check_out_dir(cfg, out, resume)
    methods = [cfg.method(n) for n in only] if only else list(cfg.methods)
    check_methods(cfg, methods, prepare_data(cfg, out, write=False))   # everything checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    write_json({**cfg.to_dict(), "written": time.strftime("%Y-%m-%dT%H:%M:%S")}, out / "study_config.json")
    data = prepare_data(cfg, out)
    todo = [(m, s) for m in methods for s in STAGES]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="study", unit="stage", dynamic_ncols=True)
    try:
        for m in methods:
            _run_method(cfg, m, data, out, bar)
    finally:
        if bar is not None:
            bar.close()
    return write_tables(cfg, out, data.test_dir)


def check_methods(cfg: StudyConfig, methods: list[MethodSpec], data: StudyDataPaths) -> None:
    """The train config each method will train with (its settings on the study's data and budget), resolved, and
    the prediction options its kind of model takes: a one-line :class:`MddoseError` naming the method."""
    seconds = cfg.budget_minutes * 60 if cfg.budget_minutes is not None else None
    for m in methods:
        try:
            if m.trained:
                _train_config(cfg, m, data, seconds).resolved()
            kind = _method_kind(m)
            for k, v in _predict_options(cfg, m).items():
                kind.check_option(k, v, f"predict.{k}")
        except MddoseError as exc:
            raise MddoseError(f"study {cfg.name}: method {m.name!r}: {exc}") from None


def _run_method(cfg: StudyConfig, m: MethodSpec, data: StudyDataPaths, out: Path, bar) -> None:
    st = MethodState.load(out / "methods" / m.slug)
    st.failed = None
    for stage in STAGES:
        if bar is not None:
            bar.set_description(f"{m.name}: {stage}")
        if st.failed is None and not st.done(stage):
            try:
                st.stages[stage] = STAGE_FUNCTIONS[stage](cfg, m, data, st)
            except Exception as exc:  # noqa: BLE001 — any failure of one method is recorded; the others go on
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                st.failed = {"stage": stage, "error": msg, "type": type(exc).__name__}
                if not isinstance(exc, MddoseError):
                    st.failed["traceback"] = traceback.format_exc(limit=8)
                logger.warning("study %s: method %s failed in %s: %s", cfg.name, m.name, stage, msg)
            st.save()
        if bar is not None:
            bar.update(1)
