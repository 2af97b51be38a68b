"""``mddose report`` — one self-contained HTML report (scores, figures, slice viewers) of a prediction run."""

from __future__ import annotations


def register(sub) -> None:
    """Add the ``report`` sub-command."""
    p = sub.add_parser("report", help="write a self-contained HTML report of a prediction run",
                       description="Write ONE offline HTML file with the score tables, dose/error and DVH figures "
                                   "and a slice viewer per patient.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="prediction folder written by `mddose predict` (any --format)")
    p.add_argument("--reference", metavar="DATA", default=None,
                   help="reference patients (ground-truth doses); a patient dir or a dir of patients "
                        "(default: the input recorded in RUN_DIR, if any)")
    p.add_argument("--out", metavar="FILE", default=None, help="HTML file to write (default RUN_DIR/report.html)")
    p.add_argument("--force", action="store_true", help="overwrite an existing report")
    p.add_argument("--max-patients", type=int, default=20, metavar="N",
                   help="slice viewers and figures for at most N patients (tables list all; default 20)")
    p.add_argument("--figures-dir", metavar="DIR", default=None, help="also write the figures there as PNG files")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from mddose.cli.evaluate import batch_status
    from mddose.errors import MddoseError
    from mddose.evaluate.report import report_run

    if args.max_patients is not None and args.max_patients < 1:
        raise MddoseError(f"--max-patients: must be ≥ 1, got {args.max_patients}")
    from pathlib import Path

    from mddose.utils.lock import output_lock

    # one HTML file, by default inside RUN_DIR (an input) by design: locked, not refused
    import contextlib

    out = Path(args.out) if args.out else Path(args.run_dir) / "report.html"   # report_run's default
    # a missing RUN_DIR is report_run's error to name (the lock would create it)
    with output_lock(out) if args.out or Path(args.run_dir).is_dir() else contextlib.nullcontext(), \
            output_lock(args.figures_dir) if args.figures_dir else contextlib.nullcontext():
        rep = report_run(args.run_dir, args.reference, args.out, force=args.force, max_patients=args.max_patients,
                         figures_dir=args.figures_dir, progress=True)
    for item, msg in rep.failures:
        print(f"skipped {item}: {msg}")
    print(f"wrote {rep.path}")
    return batch_status(rep.failures, "listed above and in the report")
