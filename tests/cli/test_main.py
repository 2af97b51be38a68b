"""The CLI entry point: help, bad arguments and user errors exit 2 with one line."""

from __future__ import annotations

import pytest

from mddose.cli.main import COMMAND_MODULES, main


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
