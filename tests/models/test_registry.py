"""Every registered (model, preset): runs, is differentiable everywhere, and its config round-trips."""

from __future__ import annotations

import json

import pytest
import torch

from mddose.errors import MddoseError
from mddose.models import available_models, build_model, build_model_from_dict, make_config

#: Presets above this many parameters are only run when a fast scan backend is in use (with the
#: reference scan the paper preset takes about a minute on a busy 2-core machine); otherwise counted only.
HEAVY_PARAMETERS = 5_000_000
IN_CHANNELS = 9
SIZE = 32

CASES = [(name, preset) for name, presets in available_models().items() for preset in presets]


def _fast_scan() -> bool:
    try:
        from mddose.ops.scan import resolve_backend
    except ImportError:
        return False
    return resolve_backend(torch.zeros(1, 2, 4), torch.zeros(2, 3)) != "ref"


def _count(cfg) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg).parameters())


@pytest.mark.parametrize("name,preset", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_registered_model(name, preset):
    cfg = make_config(name, preset, in_channels=IN_CHANNELS)
    # config round trip through JSON, and unknown keys rejected
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["model"] == name
    assert type(cfg).from_dict(d) == cfg
    with pytest.raises(MddoseError, match="unknown key"):
        type(cfg).from_dict({**d, "no_such_option": 1})
    with pytest.raises(MddoseError, match="unknown key"):
        make_config(name, preset, no_such_option=1)

    n_params = _count(cfg)
    assert n_params > 0
    if n_params > HEAVY_PARAMETERS and not _fast_scan():
        pytest.skip(f"{name}/{preset}: {n_params:,} parameters and only the reference scan: counted, not run")

    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.config == cfg
    assert sum(p.numel() for p in model.parameters()) == n_params
    rebuilt = build_model_from_dict(d)
    assert rebuilt.config == cfg

    x_t = torch.randn(1, 1, SIZE, SIZE)  # batch 1: the paper preset is run too (slow with the reference scan)
    t = torch.tensor([999])
    cond = torch.randn(1, IN_CHANNELS, SIZE, SIZE)
    out = model(x_t, t, cond)
    assert out.shape == (1, 1, SIZE, SIZE)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


def test_models_cli_lists_every_preset(capsys):
    from mddose.cli.main import main

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["name"], r["preset"]) for r in rows) == sorted(CASES)
    for r in rows:
        cfg = make_config(r["name"], r["preset"], in_channels=IN_CHANNELS)
        assert r["parameters"] == _count(cfg)
        assert r["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert all(f"{r['parameters']:,}" in table for r in rows)
    assert main(["models", "--in-channels", "0"]) == 2
