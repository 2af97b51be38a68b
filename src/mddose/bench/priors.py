"""Bench of the dose priors (:mod:`mddose.data.priors`) on the shared OpenKBP validation patients.

For each patient: the time to compute every prior (SDFs, nine beam masks, beam sum, prior dose), and how
good the prior dose is as a prediction, scored like OpenKBP (dose score = MAE over the possible-dose mask,
DVH score) — as computed (PTV70 mean = 70 Gy), with the oracle "best scale" (the one factor minimising
that patient's MAE, read from the true dose: an upper bound of what a global rescaling could do), and with
the antero-posterior mirror of the gantry convention (θ → 180° − θ; a wrong convention should score
worse). Writes ``scores.json`` and ``prior_vs_true.png`` into ``--out``.

Run (not wired to the CLI)::

    PYTHONPATH=src python -m mddose.bench.priors --out results/priors
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mddose.data.formats.openkbp import read_openkbp_patient
from mddose.data.priors import AxialTransform, PriorsSpec, compute_priors
from mddose.evaluate.dvh import dvh_curves
from mddose.evaluate.openkbp import dose_error, score_patient

FIG_OARS = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Larynx", "Mandible")


def add_arguments(parser) -> None:
    parser.add_argument("--data", metavar="PATH", help="patients folder (default: shared validation-pats)")
    parser.add_argument("--out", metavar="DIR", default="results/priors", help="where scores.json and the figure go")
    parser.add_argument("--figure-patients", default="pt_201,pt_204,pt_208", help="comma-separated ids to draw")
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats per patient (best is kept)")


def best_scale(reference: np.ndarray, prior: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(scale, dose error) of the factor in [0.5, 1.5] minimising the OpenKBP dose error of ``prior × scale``."""
    ref = reference.astype(np.float64).ravel()
    pr = prior.astype(np.float64).ravel()
    n = int(mask.sum())
    lo, hi = 0.5, 1.5
    for _ in range(40):                       # the error is convex in the scale: golden-section search
        a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        if np.abs(ref - a * pr).sum() < np.abs(ref - b * pr).sum():
            hi = b
        else:
            lo = a
    s = 0.5 * (lo + hi)
    return s, float(np.abs(ref - s * pr).sum() / n)


def _figure(cases: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(cases), 5, figsize=(22, 4.4 * len(cases)), squeeze=False)
    for row, c in zip(axes, cases):
        p, pr = c["patient"], c["priors"]
        t = p.masks["PTV70"]
        k = int(round(np.nonzero(t)[0].mean()))
        vmax = max(float(p.dose.max()), float(pr["prior_dose"].max()))
        ext = (0, p.shape[2] * p.spacing[2], p.shape[1] * p.spacing[1], 0)      # mm, anterior at the top
        for ax, img, title, cmap, lim in (
                (row[0], p.dose[k], f"{p.id} z={k}: CT + true dose", "jet", (0, vmax)),
                (row[1], pr["prior_dose"][k], f"prior dose (MAE {c['mae']:.1f} Gy)", "jet", (0, vmax)),
                (row[2], pr["beam_sum"][k], "beam sum (fields)", "viridis", (0, 9)),
                (row[3], pr["sdf_targets"][k], "SDF to targets (mm)", "RdBu_r", (-60, 60))):
            ax.imshow(p.ct[k], cmap="gray", vmin=-300, vmax=400, extent=ext)
            alpha = 0.55 if cmap == "jet" else 0.6
            shown = np.ma.masked_where(img <= (0.02 * vmax if cmap == "jet" else -1e9), img)
            im = ax.imshow(shown, cmap=cmap, vmin=lim[0], vmax=lim[1], alpha=alpha, extent=ext)
            for name, col in (("PTV70", "w"), ("PTV63", "m"), ("PTV56", "c")):
                if name in p.masks and p.masks[name][k].any():
                    ax.contour(p.masks[name][k], levels=[0.5], colors=col, linewidths=0.8,
                               extent=(0, ext[1], 0, ext[2]), origin="upper")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("x (mm) → patient's left")
            ax.set_ylabel("y (mm) → posterior")
            fig.colorbar(im, ax=ax, fraction=0.046)
        ax = row[4]
        names = [n for n in ("PTV70", "PTV63", "PTV56", *FIG_OARS) if n in p.masks and p.masks[n].any()]
        true = dvh_curves(p.dose, {n: p.masks[n] for n in names})
        prior = dvh_curves(pr["prior_dose"], {n: p.masks[n] for n in names})
        for i, n in enumerate(names):
            col = f"C{i}"
            ax.plot(true[n].bins, 100 * true[n].volume, color=col, label=n)
            ax.plot(prior[n].bins, 100 * prior[n].volume, color=col, ls="--")
        ax.set_xlabel("dose (Gy)")
        ax.set_ylabel("volume (%)")
        ax.set_title("DVH: true (solid) vs prior (dashed)", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(args) -> int:
    from mddose.bench import shared_openkbp

    data = Path(args.data) if args.data else shared_openkbp() / "validation-pats"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = PriorsSpec()
    mirrored = PriorsSpec(("prior_dose",), AxialTransform(flip_y=True).arrangement(spec.arrangement), spec.dose)
    drawn = set(args.figure_patients.split(","))
    rows, cases = [], []
    for d in sorted(p for p in data.iterdir() if p.is_dir()):
        p = read_openkbp_patient(d)
        times = []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            pr = compute_priors(p, spec)
            times.append(time.perf_counter() - t0)
        mask = p.possible_dose_mask
        err, ref, pred = score_patient(p.dose, pr["prior_dose"], p.masks, mask, p.spacing, p.prescriptions)
        dvh = [abs(ref[k] - pred[k]) for k in ref if ref[k] is not None and pred[k] is not None]
        scale, err_best = best_scale(p.dose, pr["prior_dose"], mask)
        err_mirror = dose_error(p.dose, compute_priors(p, mirrored)["prior_dose"], mask)
        corr = float(np.corrcoef(p.dose[mask], pr["prior_dose"][mask])[0, 1])
        row = {"id": p.id, "seconds": min(times), "dose_error": err, "dvh_error": float(np.mean(dvh)),
               "best_scale": scale, "dose_error_best_scale": err_best, "dose_error_ap_mirrored": err_mirror,
               "pearson_r": corr}
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        if p.id in drawn:
            cases.append({"patient": p, "priors": pr, "mae": err})
    summary = {}
    for key in ("seconds", "dose_error", "dvh_error", "best_scale", "dose_error_best_scale",
                "dose_error_ap_mirrored", "pearson_r"):
        v = np.asarray([r[key] for r in rows])
        summary[key] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    (out / "scores.json").write_text(json.dumps({"spec": spec.to_dict(), "patients": rows, "summary": summary},
                                                indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    if cases:
        _figure(cases, out / "prior_vs_true.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mddose.bench.priors", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
