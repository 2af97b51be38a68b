"""Every registered (model, preset, choice of structure encoder): runs, is differentiable everywhere, and its
config round-trips — the one test that loops over the whole registry."""

from __future__ import annotations

import json

import pytest
import torch

from mddose.errors import MddoseError
from mddose.models import available_models, build_model, build_model_from_dict, kind_of, make_config, model_info

#: Presets above this many parameters are only run when a fast scan backend is in use (with the
#: reference scan the paper preset takes about a minute on a busy 2-core machine); otherwise counted only.
HEAVY_PARAMETERS = 5_000_000
IN_CHANNELS = 9
SIZE = {2: 32, 3: 32}     # 2D slices 32², 3D volumes 32³ (every preset's minimum is ≤ these)


def _cases() -> list[tuple[str, str, dict]]:
    """(model, preset, overrides): every preset, and for fields with listed choices every value."""
    out = []
    for name, presets in available_models().items():
        choices = model_info(name).choices
        variants = [{}] if not choices else [{k: v} for k, values in choices for v in values]
        out += [(name, preset, over) for preset in presets for over in variants]
    return out


CASES = _cases()
IDS = ["-".join([n, p, *map(str, o.values())]) for n, p, o in CASES]


def _fast_scan() -> bool:
    from mddose.ops.scan import resolve_backend

    return resolve_backend(torch.zeros(1, 2, 4), torch.zeros(2, 3)) != "ref"


def _count(cfg) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg).parameters())


@pytest.mark.parametrize("name,preset,overrides", CASES, ids=IDS)
def test_registered_model(name, preset, overrides):
    cfg = make_config(name, preset, in_channels=IN_CHANNELS, **overrides)
    # config round trip through JSON, and unknown keys rejected
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["model"] == name
    assert type(cfg).from_dict(d) == cfg
    with pytest.raises(MddoseError, match="unknown key"):
        type(cfg).from_dict({**d, "no_such_option": 1})
    with pytest.raises(MddoseError, match="unknown key"):
        make_config(name, preset, no_such_option=1)

    n_params = _count(cfg)
    fitted = kind_of(name).fit is not None          # fitted by its kind (a tree ensemble): no parameters
    assert (n_params > 0) != fitted
    if n_params > HEAVY_PARAMETERS and not _fast_scan():
        pytest.skip(f"{name}/{preset}: {n_params:,} parameters and only the reference scan: counted, not run")

    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.config == cfg
    assert sum(p.numel() for p in model.parameters()) == n_params
    rebuilt = build_model_from_dict(d)
    assert rebuilt.config == cfg

    info = model_info(name)
    shape = (SIZE[info.dims],) * info.dims
    cond = torch.randn(1, IN_CHANNELS, *shape)  # batch 1: the paper preset is run too
    if info.kind == "diffusion":
        out = model(torch.randn(1, 1, *shape), torch.tensor([999]), cond)
        loss = out.sum()
    else:
        out = model(cond)
        outputs = model.training_outputs(cond)
        assert all(p.shape == out.shape for _, p in outputs)
        loss = sum(w * p.sum() for w, p in outputs)
    assert out.shape == (1, 1, *shape)
    assert torch.isfinite(out).all()
    if fitted:
        return                                      # nothing to differentiate (tests/models/test_gbt.py)
    loss.backward()
    for pname, p in model.named_parameters():
        if not p.requires_grad:  # frozen on purpose (md-dose variant "official": its never-used parameters)
            continue
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


def test_models_cli_lists_every_preset(capsys):
    from mddose.cli.main import main

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["models"]
    assert sorted((r["name"], r["preset"]) for r in rows) == sorted({(n, p) for n, p, _ in CASES})
    for r in rows:
        info = model_info(r["name"])
        assert (r["kind"], r["dims"], r["fidelity"], r["source"]) == (info.kind, info.dims, info.fidelity, info.source)
        assert r["kind"] in ("diffusion", "regression", "tree") and r["dims"] in (2, 3) and r["source"]
        assert r["fidelity"] in ("official-code", "paper", "reconstruction")
        cfg = make_config(r["name"], r["preset"], in_channels=IN_CHANNELS)
        assert r["parameters"] == _count(cfg)
        assert r["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert all(f"{r['parameters']:,}" in table for r in rows)
    assert main(["models", "--in-channels", "0"]) == 2


def test_models_json_fields_of_the_compared_methods(capsys):
    from mddose.cli.main import main

    assert main(["models", "--json"]) == 0
    rows = {(r["name"], r["preset"]): r for r in json.loads(capsys.readouterr().out)["models"]}
    expect = {"c3d": ("regression", 3, "official-code"), "hd-unet": ("regression", 3, "official-code"),
              "diffdp": ("diffusion", 2, "reconstruction"), "sp-diffdose": ("diffusion", 2, "reconstruction"),
              "md-dose": ("diffusion", 2, "paper")}
    for name, (kind, dims, fidelity) in expect.items():
        r = rows[(name, "paper")]
        assert (r["kind"], r["dims"], r["fidelity"]) == (kind, dims, fidelity)
    assert rows[("md-dose", "paper")]["structure_encoders"] == ["mamba", "none", "conv", "transformer"]
    assert "structure_encoders" not in rows[("c3d", "paper")]


def test_module_docstring_example_runs(monkeypatch):
    """The usage example of mddose.models.registry runs as written (on a copy of the registry)."""
    import doctest

    from mddose.models import registry

    available_models()  # load every architecture first, so that the copies below hold them
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_NAME_OF", dict(registry._NAME_OF))
    finder = doctest.DocTestFinder(recurse=False)
    tests = finder.find(registry, globs=vars(registry).copy())
    assert tests and len(tests[0].examples) >= 8
    result = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(tests[0])
    assert result.failed == 0 and result.attempted >= 8
