"""Does averaging K diffusion samples help? And where does the dose error come from?

Predicts every patient of a folder K times (seeds 0 … K-1, the checkpoint's default sampler), scores the
running mean of the first k samples for k = 1 … K with OpenKBP's definitions (full 3D), and prints, per
patient, the mean dose and D95 of each PTV and the mean dose outside the PTVs (reference vs prediction of
the K-sample mean) — where a planner would look first. Samples are cached as ``OUT/<id>_s<seed>.npy``,
so a stopped run resumes.

Run from the repository root, alone on the machine:

    python -m mddose.bench.scripts.sample_average --checkpoint openkbp-small \\
        --data ../shared/openkbp/validation-pats --samples 4 --out runs/sample-average
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mddose.data.io import load_patients
from mddose.evaluate.openkbp import OpenKBPScores, score_patient
from mddose.predict import predict_patient
from mddose.train.checkpoint import load_checkpoint
from mddose.predict.shipped import resolve_checkpoint


def _sample(bundle, patient, seed: int, cache: Path) -> np.ndarray:
    """(Z, Y, X) Gy: one prediction of ``patient`` with sampler seed ``seed`` (cached)."""
    path = cache / f"{patient.id}_s{seed}.npy"
    if path.exists():
        return np.load(path)
    dose = predict_patient(bundle, patient, seed=seed).dose
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, dose)
    tmp.replace(path)
    return dose


def _levels(patient, dose: np.ndarray) -> str:
    """Mean and D95 of each PTV and the mean outside the PTVs: reference → prediction (Gy)."""
    parts, outside = [], patient.possible_dose_mask.astype(bool)
    for name in sorted(patient.prescriptions, key=patient.prescriptions.get, reverse=True):
        if name not in patient.masks:
            continue
        m = patient.masks[name].astype(bool)
        outside &= ~m
        parts.append(f"{name} mean {patient.dose[m].mean():.1f}→{dose[m].mean():.1f} "
                     f"D95 {np.percentile(patient.dose[m], 5):.1f}→{np.percentile(dose[m], 5):.1f}")
    parts.append(f"outside PTVs {patient.dose[outside].mean():.1f}→{dose[outside].mean():.1f}")
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="openkbp-small")
    ap.add_argument("--data", required=True, help="folder of patients with reference doses")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--out", default="runs/sample-average", help="cache of the sampled doses")
    args = ap.parse_args()
    cache = Path(args.out)
    cache.mkdir(parents=True, exist_ok=True)
    bundle = load_checkpoint(resolve_checkpoint(args.checkpoint))
    patients, bad = load_patients(args.data)
    for path, msg in bad:
        print(f"skipped {path}: {msg}")
    scores = {k: OpenKBPScores() for k in range(1, args.samples + 1)}
    t0 = time.perf_counter()
    for p in patients:
        total = np.zeros(p.shape, np.float64)
        for seed in range(args.samples):
            total += _sample(bundle, p, seed, cache)
            mean = (total / (seed + 1)).astype(np.float32)
            scores[seed + 1].add(p.id, *score_patient(p.dose, mean, p.masks, p.possible_dose_mask, p.spacing,
                                                      p.prescriptions))
        errs = ", ".join(f"{scores[k].dose_errors[p.id]:.2f}" for k in scores)
        print(f"{p.id} ({time.perf_counter() - t0:.0f} s) dose error k=1..{args.samples}: {errs} Gy | "
              f"{_levels(p, mean)}", flush=True)
    print("| samples averaged | Dose score (Gy) | DVH score (Gy) |\n|---:|---:|---:|")
    for k, s in scores.items():
        print(f"| {k} | {s.dose_score:.3f} | {s.dvh_score:.3f} |")


if __name__ == "__main__":
    main()
