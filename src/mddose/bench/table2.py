"""The MD-Dose paper's Table 2, measured here: parameters and seconds per iteration of every registered model.

One iteration, as the paper counts it (Table 2, RTX 3090: DiffDP 0.25 s, SP-DiffDose 0.30 s, MD-Dose 0.18 s):

* diffusion models (2D): one denoiser call ``model(x_t, t, cond)`` on a 256² slice, batch 1 (the
  paper's slice size) — a whole-patient prediction makes ``steps × slices / batch`` of them;
* regression models (3D): one forward pass of a whole 128³ volume, batch 1 (OpenKBP's grid) — the whole
  prediction of a patient without test-time augmentation.

Each model runs in eval mode under ``torch.inference_mode``; the time is the best of ``repeats`` after one
warm-up call. All models are measured in one run, so the ratios between them are comparable; the
absolute times are those of this machine, not of the paper's GPU.
"""

from __future__ import annotations

import time

#: The paper's Table 2 (parameters in M as printed, seconds per iteration on an RTX 3090).
PAPER_TABLE2 = {"diffdp": (37.36, 0.25), "sp-diffdose": (84.11, 0.30), "md-dose": (30.47, 0.18)}
#: (numerator, denominator) pairs whose time ratio the paper implies
RATIOS = (("md-dose", "sp-diffdose"), ("md-dose", "diffdp"))
SIZE_2D, SIZE_3D = 256, 128
PRESETS = ("paper", "small")


def _best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def time_iteration(model, kind, channels: int, size: int, repeats: int = 3,
                   device: str = "cpu") -> tuple[float, str]:
    """(best seconds of one iteration, what it is): the call of ``kind`` (a model kind or its name;
    :meth:`~mddose.kinds.base.ModelKind.iteration`: a denoiser call on a ``size``² slice, a forward pass of a
    ``size``³ volume), batch 1, random inputs on ``device``, no gradients. On ``device="cuda"`` every call is
    synchronised."""
    import torch

    from mddose.kinds import ModelKind, get_kind

    kind = kind if isinstance(kind, ModelKind) else get_kind(kind)
    forward, what = kind.iteration(model, channels, size, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def call():
        forward()
        sync()

    with torch.inference_mode():
        return _best_time(call, repeats), what


def bench_table2(repeats: int = 3, in_channels: int = 9, models: list[str] | None = None,
                 progress: bool = True, device: str = "cpu") -> dict:
    """Rows (model, preset, kind, parameters, s/iteration, what an iteration is) and the paper's ratios."""
    import torch

    from mddose.models import available_models, build_model, model_info

    names = models or [n for n in available_models() if not n.startswith("test-")]  # tests register "test-*"
    cases = [(n, p) for n in names for p in PRESETS if p in available_models()[n]]
    rows = []
    it = cases
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(cases, desc="table2", unit="model")
    for name, preset in it:
        info = model_info(name)
        torch.manual_seed(0)
        model = build_model(name, preset=preset, in_channels=in_channels).eval().to(device)
        s, what = time_iteration(model, info.kind, in_channels, SIZE_2D if info.dims == 2 else SIZE_3D, repeats,
                                 device)
        rows.append({"model": name, "preset": preset, "kind": info.kind, "dims": info.dims,
                     "parameters": sum(p.numel() for p in model.parameters()), "s_per_iter": round(s, 4),
                     "iteration": what, "paper": PAPER_TABLE2.get(name) if preset == "paper" else None})
        del model
    return {"rows": rows, "ratios": _ratios(rows), "device": device}


def _ratios(rows: list[dict]) -> list[dict]:
    """Time ratios MD-Dose / SP-DiffDose and MD-Dose / DiffDP per preset, beside the paper's."""
    t = {(r["model"], r["preset"]): r["s_per_iter"] for r in rows}
    out = []
    for a, b in RATIOS:
        paper = round(PAPER_TABLE2[a][1] / PAPER_TABLE2[b][1], 2)
        for preset in PRESETS:
            if (a, preset) in t and (b, preset) in t:
                out.append({"ratio": f"{a} / {b}", "preset": preset,
                            "measured": round(t[(a, preset)] / t[(b, preset)], 2), "paper": paper})
    return out


def format_table2(res: dict) -> str:
    """Markdown of :func:`bench_table2`'s result."""
    lines = ["| model | preset | kind | parameters | s / iteration | iteration | paper (M params / s, RTX 3090) |",
             "|---|---|---|---:|---:|---|---|"]
    for r in res["rows"]:
        paper = f"{r['paper'][0]} M / {r['paper'][1]} s" if r["paper"] else ""
        lines.append(f"| {r['model']} | {r['preset']} | {r['kind']} {r['dims']}D | {r['parameters']:,} | "
                     f"{r['s_per_iter']:.4f} | {r['iteration']} | {paper} |")
    lines += ["", "| ratio | preset | measured | paper |", "|---|---|---:|---:|"]
    lines += [f"| {q['ratio']} | {q['preset']} | {q['measured']:.2f} | {q['paper']:.2f} |" for q in res["ratios"]]
    return "\n".join(lines)
