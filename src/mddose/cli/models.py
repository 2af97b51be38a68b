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
    """One dict per (model, preset): name, preset, parameters, config (the preset's full config dict), and
    the registry's kind ("diffusion" | "regression"), dims (2 | 3), fidelity ("official-code" | "paper" |
    "reconstruction"), source, notes; a field with a closed set of values adds a list named after it
    (md-dose: ``structure_encoders``); ``shipped``: the names of the checkpoints shipped with mddose for this
    model and preset (``mddose predict --checkpoint NAME``)."""
    import torch

    from mddose.models import available_models, build_model, make_config, model_info
    from mddose.predict.shipped import shipped_summary

    shipped = shipped_summary()
    rows = []
    for name, presets in available_models().items():
        info = model_info(name).to_dict()
        choices = info.pop("choices")
        for preset in presets:
            cfg = make_config(name, preset, in_channels=in_channels)
            with torch.device("meta"):
                model = build_model(cfg)
            n = sum(p.numel() for p in model.parameters())
            row = {"name": name, "preset": preset, "parameters": int(n), "kind": info["kind"], "dims": info["dims"],
                   "fidelity": info["fidelity"], "source": info["source"], "notes": info["notes"],
                   "config": cfg.to_dict()}
            row.update({f"{field}s": values for field, values in choices.items()})
            row["shipped"] = [s["name"] for s in shipped if s["model"] == name and s["preset"] == preset]
            rows.append(row)
    return rows


def _handler(args) -> int:
    from mddose.errors import MddoseError

    if args.in_channels < 1:
        raise MddoseError(f"--in-channels must be >= 1, got {args.in_channels}")
    rows = list_models(args.in_channels)
    if args.json:
        from mddose.predict.shipped import shipped_summary
        print(json.dumps({"models": rows, "shipped": shipped_summary()}, indent=2))
        return 0
    print(f"{'model':<13} {'preset':<7} {'parameters':>12}  {'kind':<10} {'dims':<4} {'fidelity':<14} source")
    for r in rows:
        print(f"{r['name']:<13} {r['preset']:<7} {r['parameters']:>12,}  {r['kind']:<10} {r['dims']}D   "
              f"{r['fidelity']:<14} {r['source']}")
    print(f"(parameters counted with in_channels={args.in_channels})")
    from mddose.predict.shipped import shipped_summary
    shipped = shipped_summary()
    print("shipped checkpoints (mddose predict --checkpoint NAME): "
          + (", ".join(f"{s['name']} ({s['model']}{' ' + s['preset'] if s['preset'] else ''})" for s in shipped)
             or "none in this version"))
    return 0
