"""``mddose data inspect|convert|phantom`` — look at, convert and generate patients.

``inspect`` and ``convert`` of a directory of patients report each patient that fails — whatever the
reason — as one warning line naming its folder, process the others, and exit with status 2 when any
failed (0 otherwise). A single patient that fails is one error line and status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mddose.errors import MddoseError

#: the most phantoms one `mddose data phantom` writes (a sane bound: a typo like --n 1000000 fills the disk)
MAX_PHANTOMS = 10_000


def register(sub) -> None:
    """Add ``data`` with its sub-commands to ``sub``."""
    p = sub.add_parser("data", help="inspect, convert or generate patients")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(p))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    ins = dsub.add_parser("inspect", help="ROIs, volumes, dose statistics and problems of patient(s): empty ROIs, "
                          "no possible-dose mask, repeated CSV voxel indices, a dose above 150 Gy, ...")
    ins.add_argument("path", help="a patient directory or a directory of patient directories")
    ins.add_argument("--format", choices=("openkbp", "nifti", "dicom"), help="input format (default: detect)")
    ins.add_argument("--json", action="store_true", help="print JSON (an object, or a list for a directory)")
    ins.add_argument("--no-cache", action="store_true", help="don't use the parsed-patient cache")
    ins.set_defaults(func=_inspect)

    conv = dsub.add_parser("convert", help="convert patient(s) between OpenKBP, NIfTI and DICOM")
    conv.add_argument("src", help="a patient directory or a directory of patient directories")
    conv.add_argument("dst", help="output directory (must not exist unless --force)")
    conv.add_argument("--to", required=True, choices=("openkbp", "nifti", "dicom"), help="output format")
    conv.add_argument("--from", dest="src_format", choices=("openkbp", "nifti", "dicom"),
                      help="input format (default: detect)")
    conv.add_argument("--force", action="store_true", help="replace an existing output")
    conv.set_defaults(func=_convert)

    ph = dsub.add_parser("phantom", help="write synthetic phantom patients")
    ph.add_argument("--n", type=int, required=True, help="number of phantoms")
    ph.add_argument("--out", required=True, help="output directory")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--size", type=int, choices=(64, 128), default=64)
    ph.add_argument("--format", choices=("openkbp", "nifti"), default="openkbp")
    ph.add_argument("--force", action="store_true", help="replace an existing output")
    ph.set_defaults(func=_phantom)


def _failed(bad: list, total: int, what: str) -> int:
    """Exit status of a batch: 2 (with a one-line summary on stderr) if any item failed, else 0."""
    if not bad:
        return 0
    print(f"mddose: error: {len(bad)} of {total} patient(s) could not be {what} (named above)", file=sys.stderr)
    return 2


def _inspect(args: argparse.Namespace) -> int:
    from mddose.data.inspection import duplicate_id_problems, inspect_patient
    from mddose.data.io import load_patient, load_patients, patient_dirs
    from mddose.utils.fs import describe_error
    from mddose.utils.log import logger

    single = patient_dirs(args.path) == [Path(args.path)]
    if single:  # errors propagate as one line
        patients, bad = [load_patient(args.path, args.format, cache=not args.no_cache)], []
    else:  # bad patients are logged as warnings, the rest inspected; shared ids are a problem, not a failure
        patients, bad = load_patients(args.path, args.format, cache=not args.no_cache, unique_ids=False)
    infos = []
    for p, dup in zip(patients, duplicate_id_problems(patients)):
        try:
            info = inspect_patient(p)
        except Exception as exc:  # noqa: BLE001 - one patient's failure is reported, the rest go on
            if single:
                raise MddoseError(f"cannot inspect patient {p.id} ({describe_error(exc)})",
                                  p.meta.get("source", args.path)) from None
            msg = f"{p.meta.get('source', p.id)}: {describe_error(exc)}"
            logger.warning("skipping patient: %s", msg)
            bad.append((str(p.meta.get("source", p.id)), msg))
            continue
        info["problems"] += dup
        infos.append(info)
    if not infos:
        raise MddoseError(f"no patient could be read ({len(bad)} failed)", args.path)
    if args.json:
        print(json.dumps(infos[0] if single else infos, indent=1))
    else:
        print("\n\n".join(format_inspection(i) for i in infos))
    return _failed(bad, len(infos) + len(bad), "read")


def format_inspection(info: dict) -> str:
    """Plain-text table of one :func:`mddose.data.io.inspect_patient` report."""
    sz, sy, sx = info["spacing"]
    lines = [f"patient {info['id']}  ({info.get('format')})  shape {tuple(info['shape'])} (z, y, x)  "
             f"spacing {sz:g} x {sy:g} x {sx:g} mm"]
    dose = info["dose"]
    if dose is None:
        lines.append("dose: none")
    else:
        lines.append(f"dose: max {dose['max']:.2f} Gy, mean in possible-dose mask {dose['mean']:.2f} Gy")
    lines.append(f"{'ROI':<16}{'type':<12}{'voxels':>9}{'cc':>10}{'mean Gy':>10}")
    for name, roi in info["rois"].items():
        kind = f"target {info['targets'][name]:g}" if name in info["targets"] else "OAR"
        md = roi.get("mean_dose")
        md_s = f"{md:10.2f}" if md is not None else f"{'-':>10}"
        lines.append(f"{name:<16}{kind:<12}{roi['voxels']:>9d}{roi['cc']:>10.1f}{md_s}")
    problems = info["problems"]
    lines.append("problems: none" if not problems else "problems:")
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


def _convert(args: argparse.Namespace) -> int:
    from mddose.data.io import convert
    from mddose.utils.lock import check_not_own_input, output_lock

    check_not_own_input(args.dst, args.src, out_name="DST", input_name="SRC")
    with output_lock(args.dst):
        written, bad = convert(args.src, args.dst, args.to, src_format=args.src_format, force=args.force,
                               progress=sys.stderr.isatty())
    print(f"converted {len(written)} patient(s) to {args.to} in {args.dst}"
          + (f"; {len(bad)} skipped" if bad else ""))
    return _failed(bad, len(written) + len(bad), "converted")


def _phantom(args: argparse.Namespace) -> int:
    if not 1 <= args.n <= MAX_PHANTOMS:
        raise MddoseError(f"--n must be between 1 and {MAX_PHANTOMS}, got {args.n}")
    from mddose.data.phantom import write_phantoms
    from mddose.utils.lock import output_lock

    with output_lock(args.out):
        paths = write_phantoms(args.n, args.out, seed=args.seed, size=args.size, format=args.format,
                               force=args.force)
    print(f"wrote {len(paths)} phantom(s) to {args.out}")
    return 0
