"""``mddose evaluate`` (score a prediction set) and ``mddose compare`` (compare prediction sets)."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    """Add the ``evaluate`` and ``compare`` sub-commands."""
    p = sub.add_parser("evaluate", help="score predicted doses against reference patients (OpenKBP + clinical)")
    p.add_argument("--reference", required=True, metavar="DATA",
                   help="a patient directory or a directory of patient directories (OpenKBP, NIfTI, DICOM)")
    p.add_argument("--prediction", required=True, metavar="PRED",
                   help="directory of <id>.csv (OpenKBP format), <id>.nii.gz or <id>/dose.nii.gz predictions")
    p.add_argument("--json", metavar="FILE", help="summary JSON (default PRED/evaluation/summary.json)")
    p.add_argument("--csv", metavar="FILE", help="per-patient CSV (default PRED/evaluation/per_patient.csv)")
    p.add_argument("--gamma", action="store_true", help="also compute the 3D gamma pass rate (3%%/3mm, 10%% cutoff)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.set_defaults(func=_evaluate)

    c = sub.add_parser("compare", help="compare prediction sets on the same patients (mean ± std, paired tests)")
    c.add_argument("runs", nargs="+", metavar="RUN", help="prediction directories (the first is the reference "
                   "method unless --baseline is given)")
    c.add_argument("--reference", required=True, metavar="DATA", help="the reference patients")
    c.add_argument("--names", nargs="+", metavar="NAME", help="one display name per run")
    c.add_argument("--baseline", metavar="NAME", help="method the others are tested against (default: the first)")
    c.add_argument("--test", choices=("t", "wilcoxon"), default="t",
                   help="test that decides the significance marker (default: paired t-test)")
    c.add_argument("--gamma", action="store_true", help="include the gamma pass rate (slower)")
    c.add_argument("--out", metavar="DIR", help="write comparison.md and comparison.csv into DIR")
    c.set_defaults(func=_compare)


def _evaluate(args) -> int:
    import sys

    from mddose.evaluate.run import default_outputs, evaluate_predictions

    res = evaluate_predictions(args.reference, args.prediction, gamma=args.gamma, progress=args.progress)
    print(res.table())
    if not res.records:
        print("mddose: error: no prediction could be evaluated", file=sys.stderr)
        return 2
    js, pp = default_outputs(args.prediction)
    js = Path(args.json) if args.json else js
    pp = Path(args.csv) if args.csv else pp
    res.to_csv(pp)
    res.to_json(js)
    print(f"wrote {pp} and {js}")
    return 0


def _compare(args) -> int:
    from mddose.evaluate.run import compare_runs
    from mddose.utils.fs import atomic_write

    comp = compare_runs(args.runs, args.reference, names=args.names, baseline=args.baseline, test=args.test,
                        gamma=args.gamma)
    md = comp.to_markdown()
    print(md)
    if args.out:
        out = Path(args.out)
        with atomic_write(out / "comparison.md", "w") as fh:
            fh.write(md)
        with atomic_write(out / "comparison.csv", "w") as fh:
            fh.write(comp.to_csv())
        print(f"wrote {out / 'comparison.md'} and {out / 'comparison.csv'}")
    return 0
