"""``mddose bench model`` — denoiser size and speed, training throughput, whole-patient prediction.

Sections (``--sections``, default all that can run):

* ``iter``: parameters and seconds per denoiser iteration (one forward pass, batch 1, no grad) of
  ``md-dose`` presets ``paper`` at 128² and 256² and ``small`` at 128² (the paper's Table 2 reports
  0.18 s/iteration on an RTX 3090).
* ``train``: training throughput (slices/s, forward + backward + Adam step) of ``small`` at 128², batch 8,
  of MD-Dose and of the 2D models it is compared with (SP-DiffDose, DiffDP), in one run, with the ratios.
* ``patient``: whole-patient prediction of one real OpenKBP patient (128³) with the shipped checkpoint
  ``openkbp-small`` (or ``--checkpoint``; an untrained ``small`` model where neither exists — speed does not
  depend on the weights) and the default sampler and batch (``mddose predict`` without options: the
  checkpoint's own sampler settings, else DDIM 10 steps; batch 8), then with DPM-Solver++ at as many steps.
  Target ≤ 30 s.
* ``table2``: the paper's Table 2 for every registered model (``paper`` and ``small`` presets): parameters
  and seconds per iteration (2D diffusion: one denoiser call at 256², batch 1; 3D: one forward of a
  128³ volume), all in one run, with the ratios MD-Dose / SP-DiffDose and MD-Dose / DiffDP beside the
  paper's 0.60 and 0.72 (see :mod:`mddose.bench.table2`).
* ``profile`` (not in the default set): where the time goes — torch-profiler shares (scan forward /
  backward, projections, convolutions, norms, layout copies, ...) of one training step and one denoiser call
  of each 2D diffusion model, ``small`` at 128² and ``paper`` at 256² (see :mod:`mddose.bench.step_profile`).
* ``steps``: dose score (MAE in Gy inside the possible-dose mask) against the number of sampler steps
  (DDPM 1000, DDIM 100 / 50 / 20 / 10, DPM-Solver++ 20 / 10) on held-out phantoms, with a trained
  checkpoint given by ``--checkpoint`` (e.g. the demo's ``mddose-demo/checkpoint``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mddose.utils.config import int_at_least

SECTIONS = ("iter", "train", "patient", "table2", "steps")
#: sections run only when named (slow or diagnostic)
EXTRA_SECTIONS = ("profile",)


def add_arguments(parser) -> None:
    parser.add_argument("--sections", nargs="+", choices=SECTIONS + EXTRA_SECTIONS, default=None,
                        help=f"default: {' '.join(SECTIONS)} ('steps' only with --checkpoint)")
    parser.add_argument("--checkpoint", help="trained checkpoint (folder or shipped name) for 'steps' (required "
                        "there) and 'patient' (default: the shipped openkbp-small)")
    parser.add_argument("--data", help="OpenKBP patient for 'patient' (default ../shared/openkbp/validation-pats/pt_201)")
    parser.add_argument("--phantoms", type=int_at_least(1), default=2, help="held-out phantoms for 'steps'")
    parser.add_argument("--repeats", type=int_at_least(1), default=3)
    parser.add_argument("--json", action="store_true", help="print JSON")


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (kernel compilation, allocator)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_iter(repeats: int) -> list[dict]:
    import torch

    from mddose.models import build_model

    rows = []
    for preset, size in (("small", 128), ("paper", 128), ("paper", 256)):
        model = build_model("md-dose", preset=preset, in_channels=9).eval()
        x, c = torch.randn(1, 1, size, size), torch.randn(1, 9, size, size)
        t = torch.full((1,), 500, dtype=torch.long)
        with torch.no_grad():
            s = _time(lambda: model(x, t, c), repeats)
        rows.append({"preset": preset, "size": size, "parameters": sum(p.numel() for p in model.parameters()),
                     "s_per_iter": round(s, 4)})
    return rows


def bench_train(repeats: int, batch: int = 8, size: int = 128,
                models: tuple[str, ...] = ("md-dose", "sp-diffdose", "diffdp")) -> list[dict]:
    """Training step (forward + backward + Adam) of each model's ``small`` preset, in one run; MD-Dose's row
    carries its time ratio to each other model."""
    import torch

    from mddose.diffusion import GaussianDiffusion
    from mddose.models import build_model

    rows = []
    for name in models:
        torch.manual_seed(0)
        model = build_model(name, preset="small", in_channels=9)
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        diff = GaussianDiffusion()
        x0, c = torch.rand(batch, 1, size, size), torch.randn(batch, 9, size, size)

        def step():
            loss = diff.loss(model, x0, c)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        s = _time(step, repeats)
        rows.append({"model": name, "preset": "small", "size": size, "batch": batch, "s_per_step": round(s, 3),
                     "slices_per_s": round(batch / s, 2)})
    md = next((r for r in rows if r["model"] == "md-dose"), None)
    if md is not None:
        md["ratios"] = {f"md-dose/{r['model']}": round(md["s_per_step"] / r["s_per_step"], 2)
                        for r in rows if r is not md}
    return rows


def _default_patient() -> Path:
    from mddose.bench import shared_openkbp

    return shared_openkbp() / "validation-pats" / "pt_201"


def _patient_bundle(checkpoint: str | None):
    """(bundle, label): ``checkpoint``, else the shipped ``openkbp-small``, else an untrained ``small`` model."""
    from mddose.data.inputs.slices import SliceConfig
    from mddose.diffusion import GaussianDiffusion
    from mddose.models import build_model
    from mddose.train.checkpoint import CheckpointBundle, load_checkpoint
    from mddose.predict.shipped import resolve_checkpoint, shipped_checkpoints

    if checkpoint is None and "openkbp-small" in shipped_checkpoints():
        checkpoint = "openkbp-small"
    if checkpoint is not None:
        return load_checkpoint(resolve_checkpoint(checkpoint)), checkpoint
    cfg = SliceConfig(size=128)
    model = build_model("md-dose", preset="small", in_channels=cfg.channels).eval()
    return CheckpointBundle(model=model, model_config=model.config, slice_config=cfg, train_config=None,
                            diffusion=GaussianDiffusion(), meta={}), "untrained md-dose small"


def bench_patient(path: Path, sampler: str | None = None, steps: int | None = None,
                  checkpoint: str | None = None) -> dict:
    """Whole-patient prediction time; ``sampler``/``steps`` None = the checkpoint's defaults (as ``mddose
    predict`` without options)."""
    from mddose.data.io import load_patient
    from mddose.predict import _model_name, checkpoint_defaults, predict_patient, resolve_options

    patient = load_patient(path)
    bundle, label = _patient_bundle(checkpoint)
    opts = resolve_options(bundle.kind, _model_name(bundle), checkpoint_defaults(bundle), sampler=sampler,
                           steps=steps)
    n_slices = _predicted_slices(bundle, patient)
    t = time.perf_counter()
    pred = predict_patient(bundle, patient, sampler=sampler, steps=steps)
    s = time.perf_counter() - t
    row = {"patient": patient.id, "checkpoint": label, "grid": list(patient.shape),
           "sampler": opts.get("sampler"), "steps": opts.get("steps"), "default": sampler is None and steps is None,
           "seconds": round(s, 1), "target_s": 30, "nonzero": bool(pred.dose.any())}
    if n_slices:
        row.update(slices=n_slices, s_per_slice=round(s / n_slices, 3))
    return row


def _predicted_slices(bundle, patient) -> int | None:
    """Number of axial slices a 2D diffusion model samples for ``patient`` (None for a 3D model)."""
    return bundle.model_kind.predicted_slices(bundle, patient)


def bench_steps(checkpoint: str, n: int, slices_per_patient: int = 8) -> list[dict]:
    """Dose score vs sampler steps on the central ``slices_per_patient`` dose slices of ``n`` phantoms.

    Score: mean absolute error in Gy over the body voxels of those slices (in the slice grid).
    """
    import numpy as np
    import torch

    from mddose.data.phantom import make_phantom
    from mddose.data.inputs.slices import patient_to_slices
    from mddose.diffusion import sample
    from mddose.train.checkpoint import load_checkpoint

    bundle = load_checkpoint(checkpoint)
    cfg = bundle.slice_config
    conds, doses = [], []
    for i in range(n):
        arr = patient_to_slices(make_phantom(10_000 + i, 64), cfg)
        mid = len(arr.z) // 2
        sl = slice(max(0, mid - slices_per_patient // 2), mid + (slices_per_patient + 1) // 2)
        conds.append(arr.cond[sl])
        doses.append(arr.dose[sl])
    cond = torch.from_numpy(np.concatenate(conds)).float()
    dose = np.concatenate(doses)
    body = dose > 0
    rows = []
    for sampler, steps in (("ddpm", 1000), ("ddim", 100), ("ddim", 50), ("ddim", 20), ("ddim", 10),
                           ("dpmpp2m", 20), ("dpmpp2m", 10)):
        t = time.perf_counter()
        with torch.no_grad():
            mean, _ = sample(bundle.model, bundle.diffusion, cond, sampler=sampler, steps=steps,
                             generator=torch.Generator().manual_seed(0))
        err = np.abs(mean.numpy() - dose)[body].mean() * cfg.reference_dose
        rows.append({"sampler": sampler, "steps": steps, "slices": int(cond.shape[0]),
                     "dose_score_gy": round(float(err), 3), "seconds": round(time.perf_counter() - t, 1)})
    return rows


def run(args) -> int:
    import platform

    import torch

    from mddose.errors import MddoseError

    if args.sections is None:
        args.sections = [s for s in SECTIONS if s != "steps" or args.checkpoint]
    path = Path(args.data) if args.data else _default_patient()
    if "patient" in args.sections and not path.is_dir():      # missing data is an error before any work, not "skipped"
        raise MddoseError("--data: patient folder not found (section 'patient' needs one; give --data or other "
                          "--sections)", path)
    if "steps" in args.sections and not args.checkpoint:
        raise MddoseError("--sections steps needs --checkpoint (e.g. mddose-demo/checkpoint)")
    res: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
                            f"{torch.get_num_threads()} threads"}
    if "iter" in args.sections:
        res["iter"] = bench_iter(args.repeats)
    if "train" in args.sections:
        res["train"] = bench_train(args.repeats)
    if "patient" in args.sections:
        res["patient"] = [bench_patient(path, checkpoint=args.checkpoint),
                          bench_patient(path, "dpmpp2m", checkpoint=args.checkpoint)]
    if "table2" in args.sections:
        from mddose.bench.table2 import bench_table2
        res["table2"] = bench_table2(args.repeats, progress=not args.json)
    if "profile" in args.sections:
        from mddose.bench.step_profile import bench_profile
        res["profile"] = bench_profile(progress=not args.json)
    if "steps" in args.sections:
        from mddose.predict.shipped import resolve_checkpoint
        res["steps"] = bench_steps(str(resolve_checkpoint(args.checkpoint)), args.phantoms)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(res["machine"])
    for key in SECTIONS + EXTRA_SECTIONS:
        if key not in res:
            continue
        print(f"\n[{key}]")
        if key == "profile":
            from mddose.bench.step_profile import format_profile
            print(format_profile(res[key]))
            continue
        if key == "table2":
            from mddose.bench.table2 import format_table2
            print(format_table2(res[key]))
            continue
        rows = res[key] if isinstance(res[key], list) else [res[key]]
        for row in rows:
            print("  " + (row if isinstance(row, str) else ", ".join(f"{k}={v}" for k, v in row.items())))
    return 0
