"""`mddose train` — train any registered model from a JSON config (see :mod:`mddose.train.config`).

Exit status: 0; 2 for a bad config or argument (one line), and also when some patients of the dataset could
not be used — training still runs on the others and saves its checkpoints, then one line per skipped patient
is printed.

``--init CHECKPOINT`` fine-tunes: the run starts from the checkpoint's (EMA) weights with a fresh optimizer and
schedule (:mod:`mddose.train.finetune`)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    """Add ``mddose train`` to the sub-parsers."""
    from mddose.utils.builtin import builtin_configs

    p = sub.add_parser("train", help="train any registered dose-prediction model from a JSON config",
                       description="Train a model. Configs are JSON files (see mddose/configs/demo.json); a "
                                   f"built-in config can be named: --config {' | '.join(builtin_configs())}. "
                                   "For several GPUs run it under torchrun.")
    p.add_argument("--config", required=True, help="JSON config file, or the name of a built-in config")
    p.add_argument("--out", default=None, help="output directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint; the config may differ from the run's "
                        "only in epochs, max_steps, time_budget_s, device, num_workers, log_dir and "
                        "checkpoint_every (anything else is refused)")
    p.add_argument("--init", metavar="CHECKPOINT", default=None,
                   help="fine-tune: start from the weights of this checkpoint (a folder, or a shipped name such as "
                        "openkbp-small) with a fresh optimizer and schedule; its model, inputs and kind must match "
                        "the config; recorded as 'init' in the new checkpoints' config.json (not with --resume)")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after M minutes")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps in total")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: from the config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mddose.errors import MddoseError
    from mddose.train.config import builtin_config, load_train_config
    from mddose.train.trainer import train

    path = Path(args.config)
    if not path.exists() and "/" not in args.config and not args.config.endswith(".json"):
        path = builtin_config(args.config)
    if args.epochs is not None and args.epochs < 1:
        raise MddoseError(f"--epochs must be >= 1, got {args.epochs}")
    if args.max_steps is not None and args.max_steps < 1:
        raise MddoseError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.max_minutes is not None and not 0 < args.max_minutes < float("inf"):
        raise MddoseError(f"--max-minutes must be > 0, got {args.max_minutes}")
    if args.init is not None and args.resume:
        raise MddoseError("--init starts a new run from trained weights; --resume continues a run: use one of them")
    init = None
    if args.init is not None:
        from mddose.predict.shipped import resolve_checkpoint
        try:
            init = resolve_checkpoint(args.init)
        except MddoseError as exc:
            raise MddoseError(str(exc).replace("--checkpoint:", "--init:", 1)) from None
    cfg = load_train_config(path, epochs=args.epochs, max_steps=args.max_steps, device=args.device,
                            time_budget_s=None if args.max_minutes is None else args.max_minutes * 60)
    out = Path(args.out) if args.out else Path("runs") / path.stem
    skipped: list[tuple[str, str]] = []
    from mddose.utils.lock import check_not_own_input, output_lock

    data = [d for split in (cfg.data.train, cfg.data.val) if split
            for d in ((split,) if isinstance(split, str) else split)]
    check_not_own_input(out, *data, out_name="--out", input_name="data folder")
    if init is not None:
        check_not_own_input(out, init, out_name="--out", input_name="--init checkpoint")
    import contextlib
    import os

    # under torchrun every rank runs this with the same --out: rank 0 holds the lock for the job
    rank0 = os.environ.get("RANK", "0") == "0"
    with output_lock(out) if rank0 else contextlib.nullcontext():
        best = train(cfg, out, resume=args.resume, progress=not args.no_progress, skipped=skipped, init=init,
                     init_name=args.init)
    print(f"best checkpoint: {best}")
    if not skipped:
        return 0
    import sys

    for item, msg in skipped:
        print(f"mddose: skipped patient: {msg if item in msg else f'{item}: {msg}'}", file=sys.stderr)
    print(f"mddose: error: {len(skipped)} patient(s) skipped (listed above); trained on the others",
          file=sys.stderr)
    return 2
