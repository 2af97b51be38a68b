"""``mddose demo`` — phantoms → train the small model on CPU → predict → evaluate → results folder."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on synthetic phantoms (≤ 10 min on 2 CPU cores)")
    p.add_argument("--out", default="mddose-demo", help="results folder (default: mddose-demo)")
    p.add_argument("--force", action="store_true", help="replace an existing results folder")
    p.add_argument("--minutes", type=float, default=None, help="training time budget in minutes (default 5.5)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)


def _run(args) -> int:
    import dataclasses

    from mddose.demo import DemoConfig, run_demo

    cfg = DemoConfig(seed=args.seed)
    if args.minutes is not None:
        if args.minutes <= 0:
            from mddose.errors import MddoseError

            raise MddoseError(f"--minutes: must be positive, got {args.minutes}")
        cfg = dataclasses.replace(cfg, train_minutes=args.minutes)
    run_demo(args.out, config=cfg, force=args.force)
    return 0
