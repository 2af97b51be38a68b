"""The command line's help lists come from the registries and the built-in config and study folders."""

from __future__ import annotations

import re
import sys

import pytest

from mddose.cli.main import build_parser, main


def _help(capsys, *args: str) -> str:
    with pytest.raises(SystemExit):
        main([*args, "--help"])
    return " ".join(capsys.readouterr().out.split())          # argparse wraps lines: compare unwrapped


def test_train_help_names_every_built_in_config(capsys):
    from mddose.utils.builtin import builtin_configs

    text = _help(capsys, "train").replace("- ", "-")
    assert set(builtin_configs()) >= {"openkbp-cpu", "demo"}
    for name in builtin_configs():
        assert re.search(rf"(\| |--config ){re.escape(name)}( \||\.)", text), name


def test_study_help_names_every_built_in_study(capsys):
    from mddose.utils.builtin import builtin_studies

    text = _help(capsys, "study").replace("- ", "-")          # argparse may wrap a name at its hyphen
    assert len(builtin_studies()) >= 6
    for name in builtin_studies():
        assert name in text, name


def test_predict_help_shows_the_registries_and_each_kinds_one_default(capsys):
    from mddose.diffusion import SAMPLERS
    from mddose.kinds import get_kind
    from mddose.models import available_models, model_info
    from mddose.predict.files import OUTPUT_FORMATS

    text = _help(capsys, "predict").replace("- ", "-")
    assert " | ".join(SAMPLERS) in text and "{" + ",".join(OUTPUT_FORMATS) + "}" in text
    for name in available_models():
        assert name in text, name
    diffusion = get_kind("diffusion").options
    assert f"else {diffusion['steps']})" in text and f"else {diffusion['sampler']!r})" in text
    assert f"else {get_kind('regression').options['tta']})" in text


def test_building_the_parser_does_not_load_torch():
    """The lists are computed when help is shown, so that every command starts quickly."""
    import subprocess

    code = "import sys; from mddose.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert build_parser() is not None
