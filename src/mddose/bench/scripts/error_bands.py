"""Where is a prediction wrong? Its error by distance to the targets, per patient.

For every patient of ``--reference`` with a prediction in ``--prediction`` (any format ``mddose evaluate``
reads), prints the dose error (OpenKBP) and, per band of distance to the targets' union
(:func:`mddose.evaluate.regions.error_by_distance`), the band's share of the possible-dose mask, the mean absolute
and the mean signed error (prediction − reference), and each target's mean dose (reference → prediction): a
plan-level offset shows as one sign across bands, a target the plan under- or over-dosed as its mean.

    python -m mddose.bench.scripts.error_bands --reference ../shared/openkbp/validation-pats --prediction pred
"""

from __future__ import annotations

import argparse

import numpy as np

from mddose.data.io import load_patients
from mddose.evaluate.openkbp import dose_error
from mddose.evaluate.predictions import find_predictions, match_patients, read_volume
from mddose.evaluate.regions import error_by_distance


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True)
    ap.add_argument("--prediction", required=True)
    args = ap.parse_args(argv)
    loaded, bad = load_patients(args.reference)
    for path, why in bad:
        print(f"{path}: {why}")
    patients = [p for p in loaded if p.dose is not None]
    pairs, missing, refused = match_patients(find_predictions(args.prediction), patients)
    for pid in missing:
        print(f"{pid}: no prediction")
    for pid, why in refused.items():
        print(f"{pid}: {why}")
    for p, path in pairs:
        pred = read_volume(path, p)
        targets = [t for t in p.prescriptions if t in p.masks and p.masks[t].any()]
        union = np.any([p.masks[t] for t in targets], axis=0)
        mask = p.dose_mask()
        bands = error_by_distance(p.dose, pred, union, mask, p.spacing)
        cells = "  ".join(f"{b.name}: {b.fraction:.0%} {b.mae:.2f}/{b.bias:+.2f}" for b in bands)
        means = "  ".join(f"{t} {p.dose[p.masks[t]].mean():.1f}→{pred[p.masks[t]].mean():.1f}" for t in
                          sorted(targets, key=lambda t: -p.prescriptions[t]))
        print(f"{p.id}  dose error {dose_error(p.dose, pred, mask):.2f} Gy | band: share MAE/bias (Gy)  {cells} | "
              f"mean Gy (plan→predicted)  {means}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
