"""Bench of the dose priors (:mod:`mddose.data.priors`) on the shared OpenKBP validation patients.

For each patient: the time (wall, best of ``--repeats``, and the process CPU time, which counts both
threads and is less sensitive to other jobs on a shared machine) to compute every prior (SDFs, nine beam masks, beam sum, prior dose), and how
good the prior dose is as a prediction, scored like OpenKBP (dose score = MAE over the possible-dose mask,
DVH score) — as computed (PTV70 mean = 70 Gy), with the oracle "best scale" (the one factor minimising
that patient's MAE, read from the true dose: an upper bound of what a global rescaling could do), and with
the antero-posterior mirror of the gantry convention (θ → 180° − θ; a wrong convention should score
worse), and with the experimental modulation (``modulation_iterations=3``). Writes ``scores.json`` and ``prior_vs_true.png`` into ``--out``.

**Angle scan** (the gantry convention checked on real plans): the true dose's beam streaks outside the
targets are compared with the prior dose of the nine fields rotated by φ = 0°, 5°, …, 35°: the
correlation of their high-pass parts (dose − its 10 mm in-plane Gaussian blur) over the body more than
10 mm from the targets. Fields at the documented angles peak at φ = 0°; the antero-posterior mirror of
the convention (θ → 180° − θ, fields at 20° + 40°·k) would peak at φ = 20°. (OpenKBP's nine angles are
left–right symmetric, so a left–right mirror cannot be seen this way: it is tested on phantoms.)

Run (not wired to the CLI)::

    PYTHONPATH=src python -m mddose.bench.priors --out results/priors
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
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
    parser.add_argument("--scan", metavar="PATH", action="append", default=[],
                        help="also run the angle scan on the patients of PATH (repeatable); the scored ones always")


def angle_scan(p, step: float = 5.0) -> list[float]:
    """Correlations (see the module docstring) for φ = 0, step, … < 40° of the nine fields rotated by φ."""
    from scipy import ndimage

    from mddose.data.priors import BeamArrangement

    def high_pass(d):
        return d - ndimage.gaussian_filter(d, (0, 10.0 / p.spacing[1], 10.0 / p.spacing[2]))

    sdf = compute_priors(p, PriorsSpec(("sdf",)))["sdf_targets"]
    far = (sdf > 10.0) & ndimage.binary_erosion(p.possible_dose_mask, iterations=3)
    ref = high_pass(p.dose)[far]
    out = []
    for phi in np.arange(0.0, 40.0, step):
        arr = BeamArrangement(tuple(40.0 * k + phi for k in range(9)))
        prior = compute_priors(p, PriorsSpec(("prior_dose",), arr))["prior_dose"]
        out.append(float(np.corrcoef(high_pass(prior)[far], ref)[0, 1]))
    return out


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


def _crop(p, k: int) -> tuple[slice, slice]:
    """In-plane bounding box (rows, columns) of slice ``k``'s possible-dose mask, grown by 4 voxels."""
    ys, xs = np.nonzero(p.possible_dose_mask[k])
    return (slice(max(ys.min() - 4, 0), ys.max() + 5), slice(max(xs.min() - 4, 0), xs.max() + 5))


def _figure(cases: list[dict], path: Path) -> None:
    """Per patient: CT + true dose, prior dose, beam sum with the 0° and 80° beam masks, SDF, DVHs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(cases), 6, figsize=(29, 4.8 * len(cases)), squeeze=False)
    for row, c in zip(axes, cases):
        p, pr = c["patient"], c["priors"]
        k = int(round(np.nonzero(p.masks["PTV70"])[0].mean()))
        ry, rx = _crop(p, k)
        sy, sx = p.spacing[1], p.spacing[2]
        ext = (rx.start * sx, rx.stop * sx, ry.stop * sy, ry.start * sy)        # mm, anterior at the top
        vmax = max(float(p.dose.max()), float(pr["prior_dose"].max()))
        panels = ((p.dose, f"{p.id} slice {k}: CT + true dose (Gy)", "jet", (0, vmax)),
                  (pr["prior_dose"], f"prior dose (Gy), MAE {c['mae']:.1f} Gy", "jet", (0, vmax)),
                  (c["modulated"], f"modulated prior (3 steps), MAE {c['mae_mod']:.1f} Gy", "jet", (0, vmax)),
                  (pr["beam_sum"], "beam sum; 0° (red) and 80° (white) masks", "viridis", (0, 9)),
                  (pr["sdf_targets"], "signed distance to the targets (mm)", "RdBu_r", (-50, 50)))
        for ax, (vol, title, cmap, lim) in zip(row, panels):
            img = vol[k][ry, rx]
            ax.imshow(p.ct[k][ry, rx], cmap="gray", vmin=-300, vmax=500, extent=ext)
            shown = np.ma.masked_where(img <= 0.02 * vmax, img) if cmap == "jet" else img
            im = ax.imshow(shown, cmap=cmap, vmin=lim[0], vmax=lim[1], alpha=0.6, extent=ext)
            cont = [(p.masks.get(n), col) for n, col in (("PTV70", "w"), ("PTV63", "m"), ("PTV56", "c"))]
            if cmap == "viridis":
                cont = [(pr.get("beam_0"), "r"), (pr.get("beam_80"), "w")]
            xc = (np.arange(rx.start, rx.stop) + 0.5) * sx                     # voxel centres (mm)
            yc = (np.arange(ry.start, ry.stop) + 0.5) * sy
            for m, col in cont:
                if m is not None and m[k][ry, rx].any():
                    ax.contour(xc, yc, m[k][ry, rx].astype(float), levels=[0.5], colors=col, linewidths=0.9)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("x (mm), towards the patient's left")
            ax.set_ylabel("y (mm), towards posterior")
            fig.colorbar(im, ax=ax, fraction=0.046)
        ax = row[5]
        names = [n for n in ("PTV70", "PTV63", "PTV56", *FIG_OARS) if n in p.masks and p.masks[n].any()]
        true = dvh_curves(p.dose, {n: p.masks[n] for n in names})
        prior = dvh_curves(pr["prior_dose"], {n: p.masks[n] for n in names})
        mod = dvh_curves(c["modulated"], {n: p.masks[n] for n in names})
        for i, n in enumerate(names):
            ax.plot(true[n].bins, 100 * true[n].volume, color=f"C{i}", label=n)
            ax.plot(prior[n].bins, 100 * prior[n].volume, color=f"C{i}", ls="--")
            ax.plot(mod[n].bins, 100 * mod[n].volume, color=f"C{i}", ls=":")
        ax.set_xlabel("dose (Gy)")
        ax.set_ylabel("volume (%)")
        ax.set_title("DVH: true (solid), prior (dashed), modulated (dotted)", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def run(args) -> int:
    from mddose.bench import shared_openkbp

    data = Path(args.data) if args.data else shared_openkbp() / "validation-pats"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = PriorsSpec()
    modulated = PriorsSpec(("prior_dose",), spec.arrangement, replace(spec.dose, modulation_iterations=3))
    mirrored = PriorsSpec(("prior_dose",), AxialTransform(flip_y=True).arrangement(spec.arrangement), spec.dose)
    drawn = set(args.figure_patients.split(","))
    rows, cases = [], []
    for d in sorted(p for p in data.iterdir() if p.is_dir()):
        p = read_openkbp_patient(d)
        times, cpu = [], []
        for _ in range(max(1, args.repeats)):
            t0, c0 = time.perf_counter(), time.process_time()
            pr = compute_priors(p, spec)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        mask = p.possible_dose_mask
        err, ref, pred = score_patient(p.dose, pr["prior_dose"], p.masks, mask, p.spacing, p.prescriptions)
        dvh = [abs(ref[k] - pred[k]) for k in ref if ref[k] is not None and pred[k] is not None]
        scale, err_best = best_scale(p.dose, pr["prior_dose"], mask)
        err_mirror = dose_error(p.dose, compute_priors(p, mirrored)["prior_dose"], mask)
        corr = float(np.corrcoef(p.dose[mask], pr["prior_dose"][mask])[0, 1])
        t0 = time.perf_counter()
        mod = compute_priors(p, modulated)["prior_dose"]
        t_mod = time.perf_counter() - t0
        err_mod, _, pred_mod = score_patient(p.dose, mod, p.masks, mask, p.spacing, p.prescriptions)
        dvh_mod = [abs(ref[k] - pred_mod[k]) for k in ref if ref[k] is not None and pred_mod[k] is not None]
        scan = angle_scan(p)
        row = {"id": p.id, "seconds": min(times), "cpu_seconds": min(cpu), "load_average": os.getloadavg()[0], "dose_error": err, "dvh_error": float(np.mean(dvh)),
               "best_scale": scale, "dose_error_best_scale": err_best, "dose_error_ap_mirrored": err_mirror,
               "pearson_r": corr, "dose_error_modulated": err_mod, "dvh_error_modulated": float(np.mean(dvh_mod)),
               "seconds_modulated_dose_only": t_mod, "angle_scan_peak_deg": 5.0 * int(np.argmax(scan)),
               "angle_scan": [round(v, 4) for v in scan]}
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        if p.id in drawn:
            cases.append({"patient": p, "priors": pr, "mae": err, "modulated": mod, "mae_mod": err_mod})
    extra = []
    for folder in args.scan:
        for d in sorted(q for q in Path(folder).iterdir() if q.is_dir()):
            p = read_openkbp_patient(d)
            scan = angle_scan(p)
            extra.append({"id": p.id, "angle_scan_peak_deg": 5.0 * int(np.argmax(scan)),
                          "angle_scan": [round(v, 4) for v in scan]})
            print(json.dumps(extra[-1]), flush=True)
    summary = {}
    for key in ("seconds", "cpu_seconds", "load_average", "dose_error", "dvh_error", "best_scale", "dose_error_best_scale",
                "dose_error_ap_mirrored", "pearson_r", "dose_error_modulated", "dvh_error_modulated",
                "seconds_modulated_dose_only"):
        v = np.asarray([r[key] for r in rows])
        summary[key] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    peaks = [r["angle_scan_peak_deg"] for r in rows + extra]
    summary["angle_scan_peaks_deg"] = {str(v): peaks.count(v) for v in sorted(set(peaks))}
    (out / "scores.json").write_text(json.dumps({"spec": spec.to_dict(), "patients": rows, "angle_scan_more": extra,
                                                 "summary": summary}, indent=1) + "\n")
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
