"""The CLI entry point: help, bad arguments and user errors exit 2 with one line."""

from __future__ import annotations

import errno
import importlib
import sys
import types

import pytest

from mddose.cli import main as cli_main
from mddose.cli.bench import BENCHMARKS
from mddose.cli.main import COMMAND_MODULES, build_parser, main
from mddose.errors import MddoseError


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in COMMAND_MODULES:
        assert name in out


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_user_error_is_one_line_exit_2(tmp_path, capsys):
    rc = main(["data", "inspect", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err and "missing" in err


# ------------------------------------------------------------------ exit statuses of failures (issue 11, item 3)
@pytest.fixture
def failing_command(monkeypatch):
    """A ``mddose boom`` command whose handler raises the exception stored in the returned dict."""
    raised: dict = {}
    module = types.ModuleType("mddose.cli._boom")

    def register(sub):
        sub.add_parser("boom").set_defaults(func=lambda args: (_ for _ in ()).throw(raised["exc"]))

    module.register = register
    monkeypatch.setitem(sys.modules, "mddose.cli._boom", module)
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", (*cli_main.COMMAND_MODULES, "_boom"))
    return raised


@pytest.mark.parametrize("exc, line", [
    (MddoseError("bad value", "/data/x.json"), "/data/x.json: bad value"),
    (PermissionError(13, "Permission denied", "/data/pt_1/ct.csv"), "/data/pt_1/ct.csv: Permission denied"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/out"), "/ro/out: Read-only file system"),
    (FileNotFoundError(2, "No such file or directory", "/data/broken-link"), "/data/broken-link: No such file"),
    (IsADirectoryError(21, "Is a directory", "/data/dir"), "/data/dir: Is a directory"),
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (ValueError("could not convert string to float: 'abc'"), "ValueError: could not convert string to float"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "UnicodeDecodeError: 'utf-8' codec"),
    (MemoryError(), "out of memory"),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None)
def test_user_and_system_errors_are_one_line_exit_2(failing_command, capsys, exc, line):
    failing_command["exc"] = exc
    rc = main(["boom"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"mddose: error: {line}")


def test_verbose_adds_the_traceback_of_a_user_error(failing_command, capsys):
    failing_command["exc"] = PermissionError(13, "Permission denied", "/data/ct.csv")
    assert main(["-v", "boom"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1] == "mddose: error: /data/ct.csv: Permission denied"


@pytest.mark.parametrize("exc", [TypeError("unsupported operand"), KeyError("k"), AttributeError("x"),
                                 IndexError("i"), RuntimeError("r")], ids=lambda e: type(e).__name__)
def test_a_bug_keeps_its_traceback_and_exits_1(failing_command, capsys, exc):
    failing_command["exc"] = exc
    assert main(["boom"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and f"{type(exc).__name__}" in err
    assert err.splitlines()[-1].startswith("mddose: internal error (a bug in mddose")


def test_interrupt_exits_130(failing_command, capsys):
    failing_command["exc"] = KeyboardInterrupt()
    assert main(["boom"]) == 130 and capsys.readouterr().err == "mddose: interrupted\n"


def test_real_os_error_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc = main(["data", "phantom", "--n", "1", "--size", "64", "--out", str(blocker / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and str(blocker) in err


# ------------------------------------------------------------------ no silently dropped command (issue 11, item 5)
def test_every_benchmark_is_a_command(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in BENCHMARKS)


def test_a_benchmark_that_fails_to_import_is_an_error_not_a_missing_command(monkeypatch):
    real = importlib.import_module

    def fake(name, *args):
        if name == "mddose.bench.scan":
            raise ImportError("simulated: mddose.bench.scan is broken")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ImportError, match="simulated"):
        build_parser()
