"""``mddose bench evaluate`` — OpenKBP dose/DVH scores of the shared patients and one 3D gamma.

Each patient's own dose, perturbed (× 1.02, + N(0, 0.5 Gy) inside the possible-dose mask, clipped at 0),
is scored as a prediction. Timed steps: loading (parsing the CSVs, cache off unless ``--cache``), OpenKBP
scores, clinical metrics, and gamma (3 %/3 mm, 10 % cutoff) on the patient with the finest grid — for
the perturbed dose and for 80 % of the dose (almost every voxel fails: the search is never cut short).
Targets: loading + scores ≤ 20 s for the 36 patients; gamma ≤ 30 s for one 128³ patient.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--data", metavar="PATH",
                        help="OpenKBP data (a dir with train-pats/ and validation-pats/, or a dir of patients); "
                             "default ../shared/openkbp next to the repository or $MDDOSE_SHARED/openkbp")
    parser.add_argument("--cache", action="store_true", help="load through the patient cache")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _default_data() -> Path:
    from mddose.bench import shared_openkbp

    return shared_openkbp()


def run(args) -> int:
    import numpy as np

    from mddose.data.io import load_patients
    from mddose.errors import MddoseError
    from mddose.evaluate.clinical import clinical_metrics
    from mddose.evaluate.gamma import gamma_index, pass_rate
    from mddose.evaluate.openkbp import OpenKBPScores, score_patient

    data = Path(args.data) if args.data else _default_data()
    if data is None or not data.is_dir():
        raise MddoseError("OpenKBP data not found; give --data PATH")
    roots = [data / s for s in ("train-pats", "validation-pats") if (data / s).is_dir()] or [data]
    t0 = time.perf_counter()
    patients = []
    for r in roots:
        patients.extend(load_patients(r, cache=args.cache)[0])
    patients = [p for p in patients if p.dose is not None]
    t_load = time.perf_counter() - t0
    if not patients:
        raise MddoseError("no patient with a dose found", data)
    rng = np.random.default_rng(0)
    preds = {}
    for p in patients:
        noise = rng.normal(0.0, 0.5, p.shape).astype(np.float32) * p.dose_mask()
        preds[p.id] = np.clip(p.dose * np.float32(1.02) + noise, 0, None)
    t0 = time.perf_counter()
    scores = OpenKBPScores()
    for p in patients:
        scores.add(p.id, *score_patient(p.dose, preds[p.id], p.masks, p.possible_dose_mask, p.spacing,
                                        p.prescriptions))
    t_scores = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in patients:
        clinical_metrics(preds[p.id], p.masks, p.prescriptions, p.spacing)
    t_clin = time.perf_counter() - t0
    gp = min(patients, key=lambda p: float(np.prod(p.spacing)))
    t0 = time.perf_counter()
    rate = pass_rate(gamma_index(gp.dose, preds[gp.id], gp.spacing))
    t_gamma = time.perf_counter() - t0
    t0 = time.perf_counter()  # worst case: 80 % of the dose fails almost everywhere → full search
    rate_worst = pass_rate(gamma_index(gp.dose, gp.dose * np.float32(0.8), gp.spacing))
    t_gamma_worst = time.perf_counter() - t0
    result = {
        "patients": len(patients), "load_s": t_load, "scores_s": t_scores, "clinical_s": t_clin,
        "load_plus_scores_s": t_load + t_scores, "dose_score": scores.dose_score, "dvh_score": scores.dvh_score,
        "gamma_patient": gp.id, "gamma_shape": list(gp.shape), "gamma_spacing_mm": list(gp.spacing),
        "gamma_s": t_gamma, "gamma_pass_rate": rate,
        "gamma_worst_s": t_gamma_worst, "gamma_worst_pass_rate": rate_worst, "cache": bool(args.cache),
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{'step':<34} {'seconds':>8}")
        print(f"{'load ' + str(len(patients)) + ' patients' + (' (cache)' if args.cache else ' (parse)'):<34} "
              f"{t_load:8.2f}")
        print(f"{'OpenKBP dose + DVH scores':<34} {t_scores:8.2f}")
        print(f"{'clinical metrics':<34} {t_clin:8.2f}")
        print(f"{'load + scores (target <= 20 s)':<34} {t_load + t_scores:8.2f}")
        print(f"{'gamma ' + gp.id + ' ' + 'x'.join(map(str, gp.shape)) + ' (<= 30 s)':<34} {t_gamma:8.2f}")
        print(f"{'gamma, 80 % dose (worst case)':<34} {t_gamma_worst:8.2f}")
        print(f"dose score {scores.dose_score:.4f} Gy, DVH score {scores.dvh_score:.4f} Gy, "
              f"gamma pass rate {100 * rate:.2f} % (spacing {gp.spacing} mm)")
    return 0
