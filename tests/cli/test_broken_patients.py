"""Every batch command survives a collection of broken patients (issue 11, "done when").

One collection (:func:`tests.data.broken.build_collection`: good phantoms, one broken patient per failure kind,
readable patients with problems, unsafe ids, two patients sharing an id; plus a few more kinds here) is given to
``mddose data inspect``, ``data convert``, ``predict``, ``evaluate`` and ``train`` (tiny md-dose, one step),
each run as a real ``mddose`` process. For every command: each good patient is processed, each bad one is
named in one line, stderr holds no traceback, nothing is written outside the command's output (and the
cache), and the exit status is 2.

A patient is bad for a command when that command cannot use it: an unreadable one for all of them; two
patients with the same id for the commands whose outputs are named by id (``predict``, ``evaluate``); a broken
prediction file for ``evaluate`` only. A patient whose stored id is unsafe (``../../x``, an absolute path) is
renamed by the readers: it must be processed or named, and never written outside the output. A patient
without a possible-dose mask is good for every command but ``evaluate``, which may refuse it or derive the
mask.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data import broken

SIZE = broken.SIZE
PRED_BROKEN = "good_pred_broken"          # a good patient whose prediction file is broken (evaluate)
DUPLICATES = ("duplicate_id_a", "duplicate_id_b")


def _mask_index_off_grid(root, name="bad_mask_index_off_grid"):
    d = broken.good(root, name, seed=32)
    broken._replace_line(d / "PTV.csv", 2, "99999999,")
    return d


def _ct_is_a_directory(root, name="bad_ct_directory"):
    d = broken.good(root, name, seed=33)
    (d / "ct.csv").unlink()
    (d / "ct.csv").mkdir()
    return d


#: kinds added here to those of tests/data/broken.py
EXTRA_UNREADABLE = {"bad_mask_index_off_grid": _mask_index_off_grid, "bad_ct_directory": _ct_is_a_directory}
UNREADABLE = (*broken.UNREADABLE, *EXTRA_UNREADABLE)
GOOD = ("good_1", "good_2", PRED_BROKEN, *broken.PROBLEMS)
#: command → the patients it must name as bad (every other one in GOOD, UNREADABLE or DUPLICATES is good for it)
BAD_FOR = {
    "inspect": UNREADABLE,
    "convert": UNREADABLE,
    "predict": (*UNREADABLE, *DUPLICATES),
    "evaluate": (*UNREADABLE, *DUPLICATES, PRED_BROKEN),
    "train": UNREADABLE,
}
#: command → patients that may be either processed or named
EITHER_FOR = {cmd: tuple(broken.UNSAFE_IDS) for cmd in BAD_FOR}
EITHER_FOR["evaluate"] += ("problem_no_possible_dose_mask",)


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The whole playground: the collection and every output live below it (``work/a/b/...``), so that an
    id like ``../../x`` would land inside it, where the snapshot sees it."""
    return tmp_path_factory.mktemp("broken")


@pytest.fixture(scope="module")
def collection(work):
    """``work/a/b/patients`` (see the module docstring); the safe id of each folder in ``.ids``."""
    root = work / "a" / "b" / "patients"
    col = broken.build_collection(root)
    broken.good(root, PRED_BROKEN, seed=40)
    for name, make in EXTRA_UNREADABLE.items():
        col.unreadable[name] = make(root)
    col.ids = {name: name for name in (*GOOD, *UNREADABLE)}
    col.ids.update({name: safe(root) for name, (_, safe) in broken.UNSAFE_IDS.items()})
    col.ids.update({name: "duplicate" for name in DUPLICATES})
    yield col
    col.restore_permissions()


@pytest.fixture(scope="module")
def checkpoint(work) -> Path:
    """An untrained tiny md-dose checkpoint for the phantoms' 32² slices."""
    import torch

    from mddose.data.inputs.slices import SliceConfig
    from mddose.diffusion import GaussianDiffusion
    from mddose.models import build_model
    from mddose.train.checkpoint import checkpoint_config, save_checkpoint

    torch.manual_seed(0)
    cfg = SliceConfig.for_phantoms(size=SIZE)
    model = build_model("md-dose", preset="tiny", in_channels=cfg.channels)
    conf = checkpoint_config(model, data_config={"slice_config": cfg.to_dict()}, train_config={},
                             diffusion=GaussianDiffusion().to_dict(), step=0, epoch=0)
    return save_checkpoint(work / "checkpoint", model=model, ema=model, config=conf)


@pytest.fixture(scope="module")
def predictions(work, collection) -> Path:
    """``work/a/b/pred``: an OpenKBP prediction (a copy of ``good_1``'s dose) for every readable patient's id,
    random bytes for ``good_pred_broken``."""
    pred = work / "a" / "b" / "pred"
    pred.mkdir()
    for name in (*GOOD, *broken.UNSAFE_IDS, *DUPLICATES):
        shutil.copyfile(collection.root / "good_1" / "dose.csv", pred / f"{collection.ids[name]}.csv")
    (pred / f"{PRED_BROKEN}.csv").write_bytes(os.urandom(3000))
    return pred


def snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple]:
    """Every path below ``root`` (except below ``skip``) → (type, size, mtime): what a command must not touch."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            p = here / name
            if p in skip:
                continue
            st = p.lstat()
            is_dir = p.is_dir() and not p.is_symlink()      # a folder's mtime changes when an output is made in it
            out[str(p.relative_to(root))] = (st.st_mode >> 12,) + ((0, 0) if is_dir else (st.st_size, st.st_mtime_ns))
    return out


def run_mddose(args: list[str], work: Path, allowed: tuple[Path, ...]) -> subprocess.CompletedProcess:
    """Run ``mddose ARGS`` as a process; assert that nothing outside ``allowed`` (and the cache) changed."""
    cache = work / "cache"
    before = snapshot(work, (cache, *allowed))
    env = {**os.environ, "MDDOSE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    try:
        proc = subprocess.run([sys.executable, "-m", "mddose.cli.main", *args], capture_output=True, text=True,
                              timeout=300, env=env, cwd=work, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mddose {' '.join(args)} hung (reading a FIFO?); stderr:\n{exc.stderr}")
    after = snapshot(work, (cache, *allowed))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"written outside the output: {changed}\nstderr:\n{proc.stderr}"
    return proc


def check_report(proc: subprocess.CompletedProcess, command: str, processed: set[str]) -> None:
    """Exit status 2, no traceback, each bad patient named in a line, each good one processed (folder names)."""
    lines = (proc.stdout + proc.stderr).splitlines()
    problems = []
    if "Traceback" in proc.stderr:
        problems.append("a traceback on stderr")
    bad, either = BAD_FOR[command], EITHER_FOR[command]
    unnamed = [n for n in bad if not any(n in line for line in lines)]
    if unnamed:
        problems.append(f"bad patients not named: {unnamed}")
    missing = [n for n in (*GOOD, *DUPLICATES) if n not in bad and n not in either and n not in processed]
    if missing:
        problems.append(f"good patients not processed: {missing}")
    lost = [n for n in either if n not in processed and not any(n in line for line in lines)]
    if lost:
        problems.append(f"patients neither processed nor named: {lost}")
    if proc.returncode != 2:
        problems.append(f"exit status {proc.returncode}, not 2")
    assert not problems, f"mddose {command}: " + "; ".join(problems) + f"\n--- stderr:\n{proc.stderr}"


def _names_of(ids, collection) -> set[str]:
    """Folder names of the patients with these ids."""
    ids = set(ids)
    return {name for name, pid in collection.ids.items() if pid in ids}


# ------------------------------------------------------------------------------------------- tests
def test_inspect(work, collection):
    proc = run_mddose(["data", "inspect", str(collection.root), "--json", "--no-cache"], work, ())
    try:
        infos = json.loads(proc.stdout)
    except json.JSONDecodeError:
        infos = []
    processed = {Path(i.get("source") or "").name for i in infos} if isinstance(infos, list) else set()
    check_report(proc, "inspect", processed)


def test_convert(work, collection):
    out = work / "a" / "b" / "converted"
    proc = run_mddose(["data", "convert", str(collection.root), str(out), "--to", "nifti"], work, (out,))
    processed = {p.name for p in out.iterdir()} if out.is_dir() else set()
    check_report(proc, "convert", processed)


def test_predict(work, collection, checkpoint):
    out = work / "a" / "b" / "predicted"
    proc = run_mddose(["predict", "--checkpoint", str(checkpoint), "--input", str(collection.root), "--out",
                       str(out), "--steps", "1", "--device", "cpu"], work, (out,))
    ids = [p.name[: -len(".csv")] for p in out.glob("*.csv")] if out.is_dir() else []
    check_report(proc, "predict", _names_of(ids, collection))


def test_evaluate(work, collection, predictions):
    out = predictions / "evaluation"
    proc = run_mddose(["evaluate", "--reference", str(collection.root), "--prediction", str(predictions)], work,
                      (out,))
    csv = out / "per_patient.csv"
    ids = [line.split(",")[0] for line in csv.read_text().splitlines()[1:]] if csv.is_file() else []
    check_report(proc, "evaluate", _names_of(ids, collection))


def test_train(work, collection):
    from mddose.data.inputs.slices import SliceConfig

    out = work / "a" / "b" / "run"
    config = work / "a" / "b" / "train.json"
    config.write_text(json.dumps({
        "model": "md-dose", "preset": "tiny", "slices": SliceConfig.for_phantoms(size=SIZE).to_dict(),
        "data": {"train": str(collection.root)}, "recipe": "public", "batch_size": 2, "epochs": 1,
        "val_every": 0, "seed": 0, "device": "cpu"}))
    proc = run_mddose(["train", "--config", str(config), "--out", str(out), "--max-steps", "1", "--no-progress"],
                      work, (out, config))
    ran = (out / "last" / "config.json").is_file() or (out / "best" / "config.json").is_file()
    named = {n for n in collection.ids for line in proc.stderr.splitlines() if n in line}
    check_report(proc, "train", {n for n in collection.ids if ran and n not in named})
