"""Entry point of the ``mddose`` command.

Each sub-command lives in its own module of this package exposing ``register(subparsers)``; the
module adds its parser(s) and sets ``func`` (``args -> int`` exit code). Heavy imports (torch, ...)
happen inside the handlers so that ``mddose --help`` stays quick.

User errors (:class:`mddose.errors.MddoseError`) are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mddose import __version__
from mddose.errors import MddoseError

#: Sub-command modules, in the order they appear in ``mddose --help``.
COMMAND_MODULES = ("demo", "data", "models", "train", "predict", "evaluate", "report", "bench")


class _Parser(argparse.ArgumentParser):
    """argparse with exit status 2 and a one-line message for bad arguments (argparse's default too)."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mddose", description="Radiotherapy dose prediction with diffusion models.")
    parser.add_argument("--version", action="version", version=f"mddose {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"mddose.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MddoseError as exc:
        print(f"mddose: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `mddose data inspect DIR --json | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("mddose: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
