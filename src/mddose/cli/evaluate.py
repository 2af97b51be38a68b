"""``mddose evaluate`` (score a prediction set) and ``mddose compare`` (compare prediction sets)."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    """Add the ``evaluate`` and ``compare`` sub-commands."""
    p = sub.add_parser("evaluate", help="score predicted doses against reference patients (OpenKBP + clinical)")
    p.add_argument("--reference", required=True, metavar="DATA",
                   help="a patient directory or a directory of patient directories (OpenKBP, NIfTI, DICOM)")
    p.add_argument("--prediction", required=True, metavar="PRED",
                   help="prediction folder as written by `mddose predict` (<id>.csv, <id>.nii.gz or "
                        "<id>/RTDOSE.dcm; uncertainty/, evaluation/ and predict.json are ignored)")
    p.add_argument("--json", metavar="FILE", help="summary JSON (default PRED/evaluation/summary.json)")
    p.add_argument("--csv", metavar="FILE", help="per-patient CSV (default PRED/evaluation/per_patient.csv)")
    p.add_argument("--force", action="store_true", help="replace existing --json / --csv files")
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
    c.add_argument("--force", action="store_true", help="replace existing comparison files in --out")
    c.set_defaults(func=_compare)


def batch_status(errors, where: str = "listed above") -> int:
    """Exit status of ``evaluate``, ``compare`` and ``report``: 2 (with a one-line summary on stderr) when some
    items failed — their results are written all the same — else 0."""
    import sys

    if errors:
        print(f"mddose: error: {len(errors)} item(s) failed ({where}); the others were processed", file=sys.stderr)
        return 2
    return 0


def _evaluate(args) -> int:
    from mddose.errors import MddoseError
    from mddose.evaluate.run import check_outputs, default_outputs, evaluate_predictions, write_evaluation

    import contextlib

    from mddose.utils.lock import output_lock

    js, pp = default_outputs(args.prediction)
    js, pp = check_outputs(args.json or js, args.csv or pp, args.force)  # refused before any work
    # files inside PRED (an input) by default, by design: locked, not refused as an own input
    same = Path(js).resolve() == Path(pp).resolve()
    ok = Path(args.prediction).is_dir()        # else evaluate_predictions names it (the lock would create it)
    with (output_lock(js) if ok else contextlib.nullcontext()), \
            (contextlib.nullcontext() if same or not ok else output_lock(pp)):
        res = evaluate_predictions(args.reference, args.prediction, gamma=args.gamma, progress=args.progress)
        print(res.table())
        if not res.records:
            raise MddoseError("no prediction could be evaluated", args.prediction)
        write_evaluation(res, js, pp, force=args.force)
    print(f"wrote {pp} and {js}")
    return batch_status(res.errors)


def _compare(args) -> int:
    from mddose.errors import MddoseError
    from mddose.evaluate.run import compare_runs
    from mddose.utils.fs import atomic_write, check_new_output

    import contextlib

    from mddose.utils.lock import output_lock

    files = []
    if args.out:
        files = [check_new_output(Path(args.out) / name, args.force) for name in ("comparison.md", "comparison.csv")]
    with output_lock(args.out) if args.out else contextlib.nullcontext():   # one writer of --out
        comp, errors = compare_runs(args.runs, args.reference, names=args.names, baseline=args.baseline,
                                    test=args.test, gamma=args.gamma)
        md = comp.to_markdown()
        print(md)
        for item, msg in errors:
            print(f"skipped {item}: {msg}")
        for path, text in zip(files, (md, comp.to_csv())):
            try:
                with atomic_write(path, "w") as fh:
                    fh.write(text)
            except OSError as exc:
                raise MddoseError(f"cannot write ({exc.strerror or exc})", path) from None
    if files:
        print(f"wrote {files[0]} and {files[1]}")
    return batch_status(errors)
