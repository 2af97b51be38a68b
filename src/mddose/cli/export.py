"""``mddose export`` — a prediction-only copy of a checkpoint (EMA weights + config + model card)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="write a prediction-only copy of a checkpoint (what mddose ships)",
                       description="Copy the EMA weights and config of CHECKPOINT into OUT (with SHA-256 records "
                                   "and an optional model card): about half the size, enough for `mddose predict`.")
    p.add_argument("checkpoint", help="checkpoint directory (e.g. runs/openkbp-cpu/best)")
    p.add_argument("out", help="output directory")
    p.add_argument("--card", metavar="FILE", help="model card (Markdown) stored as MODEL_CARD.md")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--reseal", action="store_true",
                   help="accept a config.json of CHECKPOINT edited since it was written (deliberately) and seal OUT "
                        "as it is now; its weights are still checked against their checksums")
    p.add_argument("--sampler", help="sampler `mddose predict` uses with this checkpoint by default (ddim | ddpm | "
                   "dpmpp2m)")
    p.add_argument("--steps", type=int, help="sampler steps `mddose predict` uses with this checkpoint by default")
    p.add_argument("--smooth", type=float, metavar="MM",
                   help="tree ensembles: the smoothing (mm) `mddose predict` uses with this checkpoint by default")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from pathlib import Path

    from mddose.errors import MddoseError
    from mddose.train.checkpoint import export_for_prediction

    card = None
    if args.card:
        try:
            card = Path(args.card).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MddoseError(f"cannot read the model card ({exc})", args.card) from None
    predict = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("smooth", args.smooth))
               if v is not None}
    from mddose.kinds import all_kinds

    for k, v in predict.items():                 # the option is wrong, not the checkpoint: said before reading it
        next(kind for kind in all_kinds().values() if k in kind.options).check_option(k, v, f"--{k}")
    from mddose.utils.lock import check_not_own_input, output_lock

    check_not_own_input(args.out, args.checkpoint, out_name="OUT", input_name="CHECKPOINT")
    with output_lock(args.out):
        out = export_for_prediction(args.checkpoint, args.out, card=card, force=args.force, predict=predict,
                                    reseal=args.reseal)
    print(f"exported {args.checkpoint} -> {out}")
    return 0
