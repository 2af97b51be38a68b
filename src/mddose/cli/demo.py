"""``mddose demo`` — phantoms → train the small model on CPU → predict → evaluate → results folder."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on synthetic phantoms (≤ 10 min on 2 CPU cores)")
    p.add_argument("--out", default="mddose-demo", help="results folder (default: mddose-demo)")
    p.add_argument("--force", action="store_true", help="replace an existing results folder")
    p.add_argument("--train-steps", type=int, default=None,
                   help="training steps (default: the demo config's, 600: the same model on every machine)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)


def _run(args) -> int:
    import dataclasses

    from mddose.demo import DemoConfig, run_demo
    from mddose.errors import MddoseError

    cfg = DemoConfig()
    try:
        cfg = DemoConfig(phantoms=dataclasses.replace(cfg.phantoms, seed=args.seed), train_steps=args.train_steps)
    except MddoseError as exc:
        raise MddoseError(str(exc).replace("demo: train_steps", "--train-steps").replace("phantoms: seed",
                                                                                        "--seed")) from None
    run_demo(args.out, config=cfg, force=args.force)
    return 0
