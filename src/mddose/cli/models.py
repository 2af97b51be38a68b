"""``mddose models`` — list every registered model and preset with its parameter count.

Parameters are counted by building each model on PyTorch's ``meta`` device (shapes only, no memory,
no compute: about a second for the paper preset).
"""

from __future__ import annotations

import json


def register(sub) -> None:
    """Add the ``models`` sub-command."""
    p = sub.add_parser("models", help="list registered models and presets with parameter counts")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--in-channels", type=int, default=9, metavar="C",
                   help="structure channels used for counting (default 9 = CT + PTV + 7 OpenKBP OARs)")
    p.set_defaults(func=_handler)


def list_models(in_channels: int = 9) -> list[dict]:
    """One dict per (model, preset): name, preset, parameters, config (the preset's full config dict)."""
    import torch

    from mddose.models import available_models, build_model, make_config

    rows = []
    for name, presets in available_models().items():
        for preset in presets:
            cfg = make_config(name, preset, in_channels=in_channels)
            with torch.device("meta"):
                model = build_model(cfg)
            n = sum(p.numel() for p in model.parameters())
            rows.append({"name": name, "preset": preset, "parameters": int(n), "config": cfg.to_dict()})
    return rows


def _handler(args) -> int:
    from mddose.errors import MddoseError

    if args.in_channels < 1:
        raise MddoseError(f"--in-channels must be >= 1, got {args.in_channels}")
    rows = list_models(args.in_channels)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<16} {'preset':<10} {'parameters':>14}  key settings")
    for r in rows:
        c = r["config"]
        keys = ", ".join(f"{k}={c[k]}" for k in ("dims", "enc_depths", "dec_depths") if k in c)
        print(f"{r['name']:<16} {r['preset']:<10} {r['parameters']:>14,}  {keys}")
    print(f"(parameters counted with in_channels={args.in_channels})")
    return 0
