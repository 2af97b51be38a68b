"""``mddose demo`` — the whole pipeline on synthetic phantoms, on a CPU, in minutes.

1. generate thoracic phantoms (training phantoms in memory, held-out test phantoms written as NIfTI),
2. train the ``small`` MD-Dose model for a fixed number of steps (shipped config ``configs/demo.json``: 600 — the
   steps that fit the 5.5 minutes the demo trained for on 2 CPU cores, so every machine trains the same model,
   a slower one for longer; the summary says how long it took),
3. predict the held-out phantoms (DPM-Solver++, few steps, with an uncertainty map),
4. evaluate them (MAE in Gy, OpenKBP-style dose and DVH scores, clinical metrics),
5. write a results folder: ``summary.md``, ``summary.json``, figures, the HTML report and the checkpoint
   (usable by ``mddose predict --checkpoint DIR/checkpoint``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mddose.data.sources import PhantomSplit
from mddose.utils.config import check_number
from mddose.utils.fs import atomic_write, check_new_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Knobs of the demo (defaults fit ≤ 10 minutes on 2 CPU cores).

    ``phantoms``: the training, validation and test phantoms (:class:`~mddose.data.sources.PhantomSplit`).
    ``train_steps``: optimizer steps of training (None: ``max_steps`` of ``configs/demo.json``, 600).
    ``sampler`` / ``steps`` / ``samples``: how the test phantoms are predicted.
    """

    phantoms: PhantomSplit = PhantomSplit(train=16, val=2, test=4, size=64, seed=0)
    train_steps: int | None = None
    sampler: str = "ddim"
    steps: int = 10
    samples: int = 2

    def __post_init__(self) -> None:
        if self.train_steps is not None:
            check_number("demo", "train_steps", self.train_steps, integer=True, at_least=1)


def _stage(msg: str) -> None:
    print(f"[mddose demo] {msg}", flush=True)


def _phantom_summary(patients) -> list[dict]:
    rows = []
    for p in patients:
        ptv = p.masks["PTV"]
        rows.append({"id": p.id, "shape": list(p.shape), "ptv_cc": round(p.roi_volume_cc("PTV"), 1),
                     "dose_max": round(float(p.dose.max()), 2),
                     "ptv_mean": round(float(p.dose[ptv].mean()), 2),
                     "cord_mean": round(float(p.dose[p.masks["SpinalCord"]].mean()), 2)})
    return rows


def run_demo(out: str | Path = "mddose-demo", *, config: DemoConfig = DemoConfig(), force: bool = False,
             progress: bool = True) -> Path:
    """Run the demo into ``out`` (refuses an existing ``out`` unless ``force``); returns ``out``.

    With ``force`` an existing ``out`` is set aside (``.<name>.mddose-previous`` beside it) and deleted only once the
    new demo is complete; a demo that fails or is interrupted puts it back. A setting-aside left by a killed run is
    never deleted: the next ``--force`` is refused in one line naming it.
    """
    out = Path(out)
    check_new_output(out, force)
    previous = out.with_name(f".{out.name}.mddose-previous")
    if previous.exists():
        from mddose.errors import MddoseError
        raise MddoseError(f"an earlier 'mddose demo --force' was interrupted: the results it replaced are in {previous}; "
                          "move them back or away first", out)
    if not out.exists():
        return _run_demo(out, config, progress)
    out.rename(previous)
    try:
        _run_demo(out, config, progress)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        previous.rename(out)
        raise
    shutil.rmtree(previous)
    return out


def _run_demo(out: Path, config: DemoConfig, progress: bool) -> Path:
    """:func:`run_demo` into the new folder ``out``."""
    from mddose.data.io import save_patient
    from mddose.train.config import builtin_config, load_train_config
    from mddose.train.trainer import train

    t0 = time.perf_counter()
    out.mkdir(parents=True)
    c, split = config, config.phantoms

    # 1. phantoms ----------------------------------------------------------------------------------
    _stage(f"1/5 generating {split.test} held-out phantoms ({split.size}-voxel grid); "
           f"{split.train} training + {split.val} validation phantoms are generated in memory")
    test_dir = out / "phantoms"
    test = split.phantoms("test")
    for i, p in enumerate(test):
        p.id = f"pt_{i + 1}"
        save_patient(p, test_dir / p.id, "nifti")
    for row in _phantom_summary(test):
        _stage(f"    {row['id']}: grid {row['shape']}, PTV {row['ptv_cc']} cc, PTV mean {row['ptv_mean']} Gy, "
               f"cord mean {row['cord_mean']} Gy, max {row['dose_max']} Gy")

    # 2. training ----------------------------------------------------------------------------------
    tcfg = load_train_config(builtin_config("demo"))
    tcfg = dataclasses.replace(tcfg, data=dataclasses.replace(tcfg.data, phantoms=split), seed=split.seed,
                               max_steps=c.train_steps or tcfg.max_steps)
    _stage(f"2/5 training md-dose 'small' for {tcfg.max_steps} steps on the CPU")
    t_train = time.perf_counter()
    best = train(tcfg, out / "run", progress=progress)
    ckpt = out / "checkpoint"
    shutil.copytree(best, ckpt)
    train_s = time.perf_counter() - t_train
    steps_done = json.loads((out / "run" / "last" / "config.json").read_text(encoding="utf-8"))["step"]
    _stage(f"    trained {steps_done} steps in {train_s / 60:.1f} min ({train_s / max(steps_done, 1):.2f} s/step)")

    # 3. prediction --------------------------------------------------------------------------------
    _stage(f"3/5 predicting {split.test} held-out phantoms ({c.sampler}, {c.steps} steps, {c.samples} samples)")
    from mddose.predict import predict_to_dir

    pred_dir = out / "predictions"
    predict_to_dir(ckpt, test_dir, pred_dir, fmt="nifti", sampler=c.sampler, steps=c.steps, samples=c.samples,
                   progress=progress)

    # 4. evaluation --------------------------------------------------------------------------------
    _stage("4/5 evaluating")
    from mddose.evaluate.run import evaluate_predictions

    result = evaluate_predictions(test_dir, pred_dir)
    result.to_json(pred_dir / "evaluation" / "summary.json")
    result.to_csv(pred_dir / "evaluation" / "per_patient.csv")
    summary = result.summary()

    # 5. figures, report, summary ------------------------------------------------------------------
    _stage("5/5 writing figures, report and summary")
    figures = _figures(test, pred_dir, out)
    report = None
    try:
        from mddose.evaluate.report import report_run

        report = report_run(pred_dir, test_dir, out / "report.html").path
    except Exception as exc:  # the report is a convenience; the demo's results stand without it
        log.warning("HTML report not written: %s", exc)
    mae = _mae(test, pred_dir)
    total_s = time.perf_counter() - t0
    info = {"dose_score": summary.get("dose_score"), "dvh_score": summary.get("dvh_score"),
            "mae_gy_in_body": mae, "patients": summary.get("patients"),
            "train_steps": steps_done, "train_seconds": round(train_s, 1), "total_seconds": round(total_s, 1),
            "checkpoint": str(ckpt), "sampler": c.sampler, "steps": c.steps, "samples": c.samples,
            "figures": [str(f) for f in figures], "report": str(report) if report else None,
            "config": dataclasses.asdict(c)}
    with atomic_write(out / "summary.json", "w") as fh:
        json.dump(info, fh, indent=2)
    with atomic_write(out / "summary.md", "w") as fh:
        fh.write(_summary_md(info, mae))
    _stage(f"done in {total_s / 60:.1f} min (training {steps_done} steps: {train_s / 60:.1f} min): "
           f"dose score {info['dose_score']:.2f} Gy, "
           f"DVH score {info['dvh_score']:.2f} Gy -> {out / 'summary.md'}")
    return out


def _mae(test, pred_dir: Path) -> dict[str, float]:
    from mddose.data.formats.nifti import read_nifti_array

    res = {}
    for p in test:
        pred = read_nifti_array(pred_dir / f"{p.id}.nii.gz")[0]
        m = p.dose_mask()
        res[p.id] = round(float(np.abs(pred[m] - p.dose[m]).mean()), 3)
    return res


def _figures(test, pred_dir: Path, out: Path) -> list[Path]:
    from mddose.data.formats.nifti import read_nifti_array
    from mddose.evaluate.figures import dose_error_figure, dvh_figure

    p = test[0]
    pred = read_nifti_array(pred_dir / f"{p.id}.nii.gz")[0]
    f1 = out / "dose_maps.png"
    dose_error_figure(p.ct, p.dose, {"MD-Dose (small, demo)": pred}, spacing=p.spacing, out_path=f1,
                      target=p.masks.get("PTV"))
    f2 = out / "dvh.png"
    masks = {k: v for k, v in p.masks.items() if k != "Body"}
    dvh_figure(p.dose, {"MD-Dose (small, demo)": pred}, masks, p.voxel_volume_cc, out_path=f2,
               title=f"{p.id}: DVH, ground truth (solid) vs prediction (dashed)")
    return [f1, f2]


def _summary_md(info: dict, mae: dict[str, float]) -> str:
    lines = ["# mddose demo results", "",
             f"Synthetic thoracic phantoms; MD-Dose `small` trained for {info['train_steps']} steps on this machine "
             f"in {info['train_seconds']:.0f} s (data included; the whole demo took {info['total_seconds']:.0f} s), "
             f"sampled with {info['sampler']} ({info['steps']} steps, {info['samples']} samples per slice).", "",
             "This is a smoke-scale run: the numbers show the pipeline works end to end, not what a "
             "fully trained model reaches.", "",
             f"- Dose score (OpenKBP definition): **{info['dose_score']:.3f} Gy**",
             f"- DVH score (OpenKBP definition): **{info['dvh_score']:.3f} Gy**", "",
             "| patient | MAE in body (Gy) |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in mae.items()]
    lines += ["", "![Dose and error maps of the first held-out phantom](dose_maps.png)", "",
              "![DVHs of the first held-out phantom](dvh.png)", "",
              "Figures: `dose_maps.png` (dose and error maps), `dvh.png` (DVH curves); "
              "report: `report.html`; checkpoint: `checkpoint/` "
              "(`mddose predict --checkpoint checkpoint --input phantoms --out pred`).", ""]
    return "\n".join(lines)
