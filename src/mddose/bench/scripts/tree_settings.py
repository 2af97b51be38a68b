"""Which settings of the tree ensemble (``gbt`` + priors) predict best? Scores on held-out patients per setting.

Draws rows of features (:mod:`mddose.data.inputs.features`, the default ``FeatureConfig``: all priors) from the
training patients once (``--rows-cache``, reused by later runs), fits scikit-learn's
``HistGradientBoostingRegressor`` with the given settings, and after each number of trees in ``--trees`` scores
every test patient with OpenKBP's definitions (full 3D, the whole possible-dose mask) — raw, and smoothed by each
of ``--smooth`` mm (:func:`mddose.kinds.tree.smooth_in_mask`). One JSON line per (setting, trees) on stdout and
appended to ``--log``. ``--extra``: candidate features not in the package (blurred prescription maps at 5, 10,
20, 40 mm, the PTVs' volumes as patient constants, the dose region blurred at 10 and 30 mm; indices 0–8).

Run alone, from the repository root (what ``openkbp-tree``'s model card quotes):

    python -m mddose.bench.scripts.tree_settings --train ../shared/openkbp/train-pats \\
        ../shared/openkbp/extra-train-pats --test ../shared/openkbp/validation-pats \\
        --rows-cache runs/tree-rows --trees 300,600,1000,1500 --set learning_rate=0.2 --rows 20000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mddose.data.inputs.features import FeatureConfig, feature_volumes
from mddose.data.io import load_patient
from mddose.evaluate.openkbp import dvh_differences, score_patient
from mddose.kinds.tree import smooth_in_mask

#: rows drawn per training patient into the cache (``--rows`` takes a random subset of them)
CACHED_ROWS = 60000
SETTINGS = dict(loss="absolute_error", learning_rate=0.1, max_leaf_nodes=63, min_samples_leaf=200,
                l2_regularization=0.0, max_bins=255)


def extra_volumes(p) -> np.ndarray:
    """(9, Z, Y, X) candidate features (see the module docstring)."""
    from scipy.ndimage import gaussian_filter

    from mddose.data.patient import prescription_map

    cfg = FeatureConfig()
    sp = np.asarray(p.spacing, float)
    rx = prescription_map(p.masks, {t: p.prescriptions.get(t, 0.0) for t in cfg.targets if t in p.masks}, p.shape)
    out = [gaussian_filter(rx.astype(np.float32), s / sp, mode="constant") for s in (5, 10, 20, 40)]
    cc = np.prod(sp) / 1000.0
    out += [np.full(p.shape, p.masks[t].sum() * cc if t in p.masks else 0.0, np.float32) for t in cfg.targets]
    region = p.dose_mask().astype(np.float32)
    out += [gaussian_filter(region, s / sp, mode="constant") for s in (10, 30)]
    return np.stack(out).astype(np.float32)


def patient_arrays(d: Path, cache: Path, seed: int | None) -> dict:
    """Features (+ extras) and dose of the possible-dose mask's voxels (all, or ``CACHED_ROWS`` drawn with
    ``seed``), cached as ``cache/<id>.npz``."""
    f = cache / f"{d.name}.npz"
    if not f.exists():
        p = load_patient(d)
        where = np.flatnonzero(p.dose_mask())
        if seed is not None:
            where = np.sort(np.random.default_rng(seed).choice(where, min(CACHED_ROWS, where.size), replace=False))
        vols = np.concatenate([feature_volumes(p, FeatureConfig()), extra_volumes(p)]).reshape(-1, p.dose.size)
        tmp = f.with_suffix(".tmp.npz")
        np.savez(tmp, x=vols[:, where].T.copy(), y=p.dose.reshape(-1)[where], where=where)
        tmp.replace(f)
    return dict(np.load(f))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", required=True, help="folders of training patients")
    ap.add_argument("--test", required=True, help="folder of the patients scored")
    ap.add_argument("--rows-cache", required=True, help="folder of the cached feature rows")
    ap.add_argument("--rows", type=int, default=20000, help="rows per training patient (≤ 60,000)")
    ap.add_argument("--trees", default="300,600", help="numbers of trees scored (increasing)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help=f"settings over {SETTINGS}")
    ap.add_argument("--extra", default="", help="indices of extra features (0-8), comma-separated")
    ap.add_argument("--smooth", default="3", help="smoothing (mm) scored besides the raw dose, comma-separated")
    ap.add_argument("--log", default=None, help="JSON-lines file the results are appended to")
    args = ap.parse_args(argv)
    from sklearn.ensemble import HistGradientBoostingRegressor

    cache = Path(args.rows_cache)
    cache.mkdir(parents=True, exist_ok=True)
    n_base = len(FeatureConfig().channel_names)
    cols = list(range(n_base)) + [n_base + int(e) for e in args.extra.split(",") if e]
    settings = dict(SETTINGS)
    for kv in args.set:
        k, v = kv.split("=", 1)
        settings[k] = type(SETTINGS[k])(v)
    train = sorted((d for root in args.train for d in Path(root).iterdir() if d.is_dir()), key=lambda d: d.name)
    xs, ys = [], []
    for i, d in enumerate(train):
        a = patient_arrays(d, cache, seed=i)
        pick = np.random.default_rng(i).permutation(len(a["y"]))[:args.rows]
        xs.append(a["x"][pick][:, cols])
        ys.append(a["y"][pick])
    x, y = np.concatenate(xs), np.concatenate(ys)
    test = [(load_patient(d), patient_arrays(d, cache, seed=None))
            for d in sorted(Path(args.test).iterdir(), key=lambda d: d.name) if d.is_dir()]
    smooths = [0.0] + [float(s) for s in args.smooth.split(",") if s]
    est = HistGradientBoostingRegressor(early_stopping=False, warm_start=True, random_state=0, max_iter=1,
                                        **settings)
    fit_s = 0.0
    for trees in (int(t) for t in args.trees.split(",")):
        t0 = time.perf_counter()
        est.max_iter = trees
        est.fit(x, y)
        fit_s += time.perf_counter() - t0
        scores = {s: ([], []) for s in smooths}
        for p, a in test:
            raw = np.zeros(p.dose.size, np.float32)
            raw[a["where"]] = np.clip(est.predict(a["x"][:, cols]), 0, None)
            raw = raw.reshape(p.shape)
            for s in smooths:
                dose = smooth_in_mask(raw, p.dose_mask(), p.spacing, s)
                err, ref, pred = score_patient(p.dose, dose, p.masks, p.dose_mask(), p.spacing, p.prescriptions)
                scores[s][0].append(err)
                scores[s][1].extend(dvh_differences(ref, pred).values())
        row = {"settings": settings, "rows": args.rows, "extra": args.extra, "trees": trees,
               "fit_s": round(fit_s, 1),
               **{f"smooth_{s:g}": [round(float(np.mean(d)), 3), round(float(np.mean(v)), 3)]
                  for s, (d, v) in scores.items()}}
        print(json.dumps(row), flush=True)
        if args.log:
            with open(args.log, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
