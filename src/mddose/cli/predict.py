"""``mddose predict`` — the 3D dose of each patient from a trained checkpoint.

Exit status 0 when every patient was predicted; 2 when some could not be (each named in one line, the
others written) or none could.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mddose.cli.lazy import models_help, option_help

#: the output formats of ``mddose.predict.files.OUTPUT_FORMATS`` (a test checks they agree; importing that module
#: here would load torch when the parser is built)
OUTPUT_FORMATS = ("openkbp", "nifti", "dicom")


def samplers_text() -> str:
    from mddose.diffusion import SAMPLERS
    return " | ".join(SAMPLERS) + " (see BENCHMARKS.md)"


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict the 3D dose of patients with a trained checkpoint")
    p.add_argument("--checkpoint", required=True,
                   help=models_help("checkpoint directory of any model, or the name of a checkpoint shipped with "
                                    "mddose (mddose models)"))
    p.add_argument("--input", required=True, help="a patient directory or a directory of patients (any format)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="openkbp", choices=OUTPUT_FORMATS, help="output format")
    d = p.add_argument_group("2D diffusion models only")
    d.add_argument("--sampler", default=None,
                   help=option_help("diffusion", "sampler", samplers_text))
    d.add_argument("--steps", type=int, default=None,
                   help=option_help("diffusion", "steps", "sampler steps (1000 = the paper's DDPM)"))
    d.add_argument("--eta", type=float, default=None, help=option_help("diffusion", "eta", "DDIM eta"))
    d.add_argument("--samples", type=int, default=None,
                   help=option_help("diffusion", "samples", "samples per slice; >1 also writes an uncertainty map"))
    r = p.add_argument_group("3D regression models only")
    r.add_argument("--no-tta", dest="tta", action="store_const", const=False, default=None,
                   help=option_help("regression", "tta", "one forward pass instead of the mean over four flips "
                                                        "(test-time augmentation; tta)"))
    t = p.add_argument_group("tree ensembles only")
    t.add_argument("--smooth", type=float, default=None, metavar="MM",
                   help=option_help("tree", "smooth", "Gaussian smoothing (mm, standard deviation) of the trees' "
                                                      "dose inside the possible-dose mask; 0: none"))
    p.add_argument("--beams", default=None, metavar="ANGLES",
                   help="gantry angles (degrees, IEC 61217, comma-separated) of the fields of patients without an "
                        "RTPLAN, for a model trained with beam priors (default: those it was trained with)")
    p.add_argument("--batch", type=int, default=8, help="slices per sampler call (default 8: fastest per slice on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--force", action="store_true", help="add to / overwrite an existing non-empty output directory: the new result is built beside "
                        "it and swapped in once complete, keeping the files it did not rewrite (a failed or killed "
                        "run leaves it as it was)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from mddose.predict import predict_to_dir
    from mddose.utils.lock import check_not_own_input, output_lock

    check_not_own_input(args.out, args.input, out_name="--out", input_name="--input")
    if Path(args.checkpoint).exists():        # a shipped checkpoint's name is not a folder here
        check_not_own_input(args.out, args.checkpoint, out_name="--out", input_name="--checkpoint")
    with output_lock(args.out):
        done, errors = predict_to_dir(
            args.checkpoint, args.input, args.out, fmt=args.format, sampler=args.sampler, steps=args.steps,
            eta=args.eta, samples=args.samples, tta=args.tta, smooth=args.smooth, batch=args.batch,
            force=args.force, seed=args.seed, beams=args.beams, device=args.device, progress=sys.stderr.isatty())
    print(f"predicted {len(done)} patient(s) into {args.out}")
    if not errors:
        return 0
    # each failure was logged as one warning line when it happened; the exit status says some failed
    print(f"mddose: {len(errors)} patient(s) failed, not predicted: "
          + ", ".join(Path(item).name for item, _ in errors), file=sys.stderr)
    return 2
