"""``mddose study`` — train, predict and evaluate several methods alike and compare them (Tables 1–3)."""

from __future__ import annotations


def register(sub) -> None:
    from mddose.utils.builtin import builtin_studies

    p = sub.add_parser("study", help="compare methods: train → predict → evaluate each, then Tables 1–3 + report",
                       description="Run a study: every method is trained with the same budget on the same "
                                   "patients, predicts the same test patients and is scored alike; writes "
                                   "table1.md/.csv, table2.md, table3.md, study.json and report.html into --out. "
                                   "Finished work is kept: a re-run (or --resume) continues where it stopped.")
    p.add_argument("--config", required=True,
                   help=f"a study JSON file, or a built-in study: {' | '.join(builtin_studies())}")
    p.add_argument("--out", required=True, help="study directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the study in --out (also with another --budget-minutes)")
    p.add_argument("--only", metavar="METHOD,…", help="run only these methods (display names, comma-separated)")
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="training budget of every method, in minutes (replaces the config's budget)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from mddose.study.config import load_study_config
    from mddose.study.runner import run_study

    cfg = load_study_config(args.config)
    if args.budget_minutes is not None:
        cfg = cfg.with_budget_minutes(args.budget_minutes)
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    for name in only or []:
        cfg.method(name)                          # unknown names → one line, exit 2, before any work
    from mddose.utils.lock import output_lock

    with output_lock(args.out):
        study = run_study(cfg, args.out, resume=args.resume, only=only, progress=not args.no_progress)
    failed = {m: r["failed"] for m, r in study["methods"].items() if r["status"] == "failed"}
    lost = {m: r["not_scored"] for m, r in study["methods"].items() if r["status"] == "done" and r["not_scored"]}
    print(f"study {cfg.name}: tables and report in {args.out}")
    for m, f in failed.items():
        print(f"failed {m} in {f['stage']}: {f['error']}")
    for m, pts in lost.items():
        print(f"incomplete {m}: {len(pts)} test patient(s) not scored (left out of its rows): "
              + "; ".join(f"{p}: {w}" for p, w in pts.items()))
    return 2 if failed or lost else 0
