"""Entry point of the ``mddose`` command.

Each sub-command lives in its own module of this package exposing ``register(subparsers)``; the
module adds its parser(s) and sets ``func`` (``args -> int`` exit code). Heavy imports (torch, ...)
happen inside the handlers so that ``mddose --help`` stays quick.

Exit status: 0 success; 2 bad input — a bad argument, a user error, or a batch in which some items failed
(the command reports each, and writes the results of the others); 1 a bug in mddose; 130 interrupted.

What is printed as one line ``mddose: error: ...`` (exit 2), never with a traceback:

* :class:`mddose.errors.MddoseError` — every problem of the user's input, named by the code that found it;
* ``OSError`` of any kind — unreadable files and folders, read-only or full outputs, broken links, special
  files: they come from the user's files and machine, not from a bug (``<file>: <reason>``);
* ``ValueError`` — Python's and numpy's exception for a bad value (a non-numeric string where a number is
  expected, text that is not UTF-8, malformed JSON), shown with its type;
* ``MemoryError``.

Anything else (``TypeError``, ``KeyError``, ``AttributeError``, ``IndexError``, ``RuntimeError``, ...) is a bug:
its traceback is printed, followed by one line saying so, and the exit status is 1. Readers and batch loops
turn whatever a bad input makes them raise into one of the above at their boundary (a batch reports each
failed item in one line and goes on), so a traceback is never the answer to bad input. ``-v`` also prints the
traceback of the one-line errors.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mddose import __version__
from mddose.errors import MddoseError
from mddose.utils.fs import describe_error

#: Sub-command modules, in the order they appear in ``mddose --help``.
COMMAND_MODULES = ("demo", "data", "models", "train", "predict", "evaluate", "report", "study", "export", "bench")


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
    except BrokenPipeError:  # e.g. `mddose data inspect DIR --json | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("mddose: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        return _user_error(exc, verbose=args.verbose)
    except Exception as exc:  # noqa: BLE001 - a bug: keep its traceback visible, say so, exit 1
        import traceback

        traceback.print_exc()
        print(f"mddose: internal error (a bug in mddose; please report it with the traceback above): "
              f"{describe_error(exc)}", file=sys.stderr)
        return 1


#: Exceptions printed as one line with exit status 2 (see the module docstring).
USER_ERRORS = (MddoseError, OSError, ValueError, MemoryError)


def _user_error(exc: BaseException, verbose: bool = False) -> int:
    """Print ``exc`` as one ``mddose: error:`` line (and its traceback if ``verbose``); return 2."""
    if verbose:
        import traceback

        traceback.print_exception(exc)
    line = describe_error(exc)
    if isinstance(exc, MemoryError):
        line = "out of memory" + (f" ({exc})" if str(exc) else "")
    print(f"mddose: error: {line}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
