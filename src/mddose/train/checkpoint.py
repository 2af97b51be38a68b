"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint directory holds::

    model.safetensors        raw model weights (state_dict)
    ema.safetensors          EMA weights (what prediction uses)
    config.json              format/version, mddose version, model kind and config (model.config.to_dict()),
                             the kind's input config under its key (``slice_config`` of 2D models,
                             ``volume_config`` of 3D ones), the train config (without the input config: each
                             setting is stored once), the kind's own entries (``diffusion``: the schedule of a
                             diffusion model), step, epoch, ``init`` (a fine-tuned run: the checkpoint it
                             started from), ``files``: size and SHA-256 of every other file (written last), and
                             ``config_sha256``: the seal of all of config.json (:func:`mddose.train.integrity.seal`)
    train_state.safetensors  optimizer tensors, RNG states (torch CPU/CUDA, noise generator)
    train_state.json         optimizer scalars/param groups, GradScaler, EMA counter, NumPy and Python
                             RNG states, step/epoch/position, best score

Directories are written with :func:`mddose.utils.fs.atomic_dir`, so a killed run leaves either the
old or the new checkpoint. :func:`load_checkpoint` and :func:`load_train_state` check every file of the
checkpoint before anything is built or loaded (:mod:`mddose.train.integrity`: safetensors headers always;
sizes and SHA-256 checksums when recorded — checkpoints written before checksums existed still load, with
a warning), refuse NaN or infinite weights, and raise one-line :class:`MddoseError` messages naming the
file; ``torch.load`` is never used. The training-state files are optional for prediction.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mddose.errors import MddoseError
from mddose.train.integrity import (SEAL_KEY, check_finite, check_finite_file, check_seal, file_record, seal,
                                    verify_files)
from mddose.utils.config import read_json_object
from mddose.utils.fs import atomic_dir, atomic_write

FORMAT = "mddose-checkpoint"
FORMAT_VERSION = 1
FILES = ("model.safetensors", "ema.safetensors", "config.json", "train_state.safetensors", "train_state.json")
#: what prediction needs; TRAIN_STATE_FILES are needed to resume
WEIGHT_FILES = ("model.safetensors", "ema.safetensors", "config.json")
TRAIN_STATE_FILES = ("train_state.safetensors", "train_state.json")


# ---------------------------------------------------------------------------- small I/O helpers
def _cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file
    save_file(_cpu(tensors), str(path))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a (verified) safetensors file; NaN/Inf in floating-point tensors → MddoseError."""
    from safetensors.torch import load_file
    if not path.is_file():
        raise MddoseError("checkpoint file missing", path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncation/corruption
        raise MddoseError(f"corrupt or truncated safetensors file ({str(exc).splitlines()[0]})", path) from None
    check_finite(tensors, path)
    return tensors


def _write_json(obj: Any, path: Path) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)


def _read_json(path: Path) -> dict:
    return read_json_object(path, "checkpoint file")


# ---------------------------------------------------------------------------- optimizer / RNG state
def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``opt.state_dict()`` into tensors (``optim.<param>.<name>``) and JSON scalars."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = v
            else:
                scalars[f"{pid}.{name}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], js: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for key, v in js["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in js["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_state(noise_gen: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Torch (CPU, CUDA, noise generator) states as uint8 tensors; NumPy and Python states as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    if noise_gen is not None:
        tensors["rng.noise"] = noise_gen.get_state()
    np_state = np.random.get_state(legacy=False)
    np_state = {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}}
    py = random.getstate()
    return tensors, {"numpy": np_state, "python": [py[0], list(py[1]), py[2]]}


def set_rng_state(tensors: dict[str, torch.Tensor], js: dict, noise_gen: torch.Generator | None = None) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    if noise_gen is not None and "rng.noise" in tensors:
        noise_gen.set_state(tensors["rng.noise"])
    st = dict(js["numpy"])
    st["state"] = {"key": np.asarray(st["state"]["key"], dtype=np.uint32), "pos": st["state"]["pos"]}
    np.random.set_state(st)
    v, internal, gauss = js["python"]
    random.setstate((v, tuple(internal), gauss))


# ---------------------------------------------------------------------------- save
def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def checkpoint_config(model: nn.Module, *, data_config: dict[str, dict], train_config: dict, step: int, epoch: int,
                      kind: str = "diffusion", **kind_meta: Any) -> dict:
    """config.json of a checkpoint. ``data_config``: ``{kind.data_key: input config dict}`` (``{"slice_config":
    {...}}``); ``kind``: the name of the model's kind; ``kind_meta``: the kind's own entries
    (:meth:`~mddose.kinds.base.ModelKind.checkpoint_meta`, e.g. ``diffusion={...}``)."""
    from mddose import __version__
    mcfg = getattr(unwrap(model), "config", None)
    grid = next((d.get("size") for d in data_config.values() if isinstance(d, dict)), None)
    mdict = mcfg.to_dict() if mcfg is not None else None
    if mdict is not None and grid is not None and mdict.get("grid_size") == grid:
        # a 3D model's grid is the volume config's size, stored once (a 2D model's image_size stays in its config:
        # the official md-dose sizes its position embeddings by it, which its weights carry)
        del mdict["grid_size"]
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "mddose_version": __version__, "kind": kind,
            "model": mdict, **data_config, **kind_meta,
            "train_config": train_config, "step": int(step), "epoch": int(epoch)}


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, ema: nn.Module, config: dict,
                    optimizer: torch.optim.Optimizer | None = None, scaler=None,
                    noise_gen: torch.Generator | None = None, state: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (replacing an existing one only once complete).

    Args:
        config: from :func:`checkpoint_config`. state: JSON scalars (step, epoch, position, elapsed, ...), written
            with the optimizer's state, or alone (``train_state.json`` only) for a model fitted without one.
    ``config.json`` is written last, with ``config["files"]``: the size and SHA-256 of every other file.
    """
    path = Path(path)
    with atomic_dir(path, force=True) as tmp:
        _save_tensors(unwrap(model).state_dict(), tmp / "model.safetensors")
        _save_tensors(unwrap(ema).state_dict(), tmp / "ema.safetensors")
        if optimizer is not None:
            t_opt, j_opt = optimizer_state(optimizer)
            t_rng, j_rng = rng_state(noise_gen)
            _save_tensors({**t_opt, **t_rng}, tmp / "train_state.safetensors")
            js = {"optimizer": j_opt, "rng": j_rng, "state": state or {},
                  "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
            _write_json(js, tmp / "train_state.json")
        elif state is not None:          # a fitted model (a tree ensemble): its run's record, no optimizer
            _write_json({"state": state}, tmp / "train_state.json")
        files = {f.name: file_record(f) for f in sorted(tmp.iterdir()) if f.name != "config.json"}
        _write_json(seal({**config, "files": files}), tmp / "config.json")
    return path


def export_for_prediction(src: str | os.PathLike, dst: str | os.PathLike, *, card: str | None = None,
                          force: bool = False, predict: dict | None = None, reseal: bool = False) -> Path:
    """A prediction-only copy of checkpoint ``src`` in ``dst``: the EMA weights, ``config.json`` (marked
    ``"export": "prediction"``, with the checksum record of what it holds) and ``MODEL_CARD.md`` (``card``).

    About half the size of a checkpoint (no raw weights, no training state) — what mddose ships. ``src`` is
    checked completely first. An existing ``dst`` is replaced only with ``force``. ``predict``: prediction
    options the checkpoint recommends (e.g. ``{"steps": 5}``), merged over those ``src`` records and used
    by ``mddose predict`` when the user gives none (:func:`mddose.predict.options.checkpoint_defaults`).
    ``reseal``: accept a ``config.json`` edited since it was sealed (its weights are still verified against
    their checksums, the model is still built from it) and seal ``dst`` as it is now.
    """
    from mddose.predict.options import checkpoint_defaults
    from mddose.utils.fs import check_new_output

    bundle = load_checkpoint(src, reseal=reseal)   # every file of src verified, the weights load and are finite
    if bundle.model_kind.weightless:
        raise MddoseError(f"is a {bundle.model_kind.words}: it has no weights to export (use it by name)", src)
    cfg = {k: v for k, v in bundle.meta.items() if k not in ("files", SEAL_KEY)}
    if predict:
        if any(k not in bundle.model_kind.options for k in predict):   # an option of another kind: named as such
            from mddose.predict.options import resolve_options
            resolve_options(bundle.kind, (cfg.get("model") or {}).get("model", "this model"), **predict)
        cfg["predict"] = {**checkpoint_defaults(bundle), **predict}
        bundle.meta = cfg
        checkpoint_defaults(bundle)          # refuse bad options before anything is written
    dst = check_new_output(dst, force)
    cfg["export"] = "prediction"
    with atomic_dir(dst, force=True) as tmp:
        _save_tensors(bundle.model.state_dict(), tmp / "ema.safetensors")
        if card is not None:
            with atomic_write(tmp / "MODEL_CARD.md", "w") as fh:
                fh.write(card)
        files = {f.name: file_record(f) for f in sorted(tmp.iterdir()) if f.name.endswith(".safetensors")}
        _write_json(seal({**cfg, "files": files}), tmp / "config.json")
    return dst


# ---------------------------------------------------------------------------- load
def read_checkpoint_config(path: str | os.PathLike, *, reseal: bool = False) -> dict:
    """config.json of a checkpoint, validated (format, version, seal: :func:`~mddose.train.integrity.check_seal`;
    ``reseal`` accepts a broken seal with a warning)."""
    path = Path(path)
    if not path.is_dir():
        raise MddoseError("checkpoint directory not found", path)
    cfg = _read_json(path / "config.json")
    if cfg.get("format") != FORMAT:
        raise MddoseError(f"not an mddose checkpoint (format {cfg.get('format')!r})", path / "config.json")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise MddoseError(f"checkpoint format version {cfg.get('format_version')!r} is not supported "
                          f"(this mddose reads version {FORMAT_VERSION})", path / "config.json")
    check_seal(cfg, path / "config.json", reseal=reseal)
    return cfg


def check_state_dict(module: nn.Module, sd: dict[str, torch.Tensor], where: Path) -> None:
    """Keys and shapes of ``sd`` must match ``module``'s; mismatch → one-line MddoseError."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise MddoseError(f"weights do not match the model (missing {len(missing)} key(s) e.g. "
                          f"{missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]})", where)
    bad = [k for k in own if tuple(own[k].shape) != tuple(sd[k].shape)]
    if bad:
        k = bad[0]
        raise MddoseError(f"weights do not match the model: {len(bad)} shape mismatch(es), e.g. {k} "
                          f"{tuple(sd[k].shape)} vs {tuple(own[k].shape)}", where)


def load_state_dict_checked(module: nn.Module, sd: dict[str, torch.Tensor], where: Path) -> None:
    """``module.load_state_dict(sd)`` after :func:`check_state_dict`."""
    check_state_dict(module, sd, where)
    module.load_state_dict(sd)


class CheckpointBundle:
    """What :func:`load_checkpoint` returns.

    model: EMA weights, eval mode. model_config: its config. inputs: the input config of the model's kind (a
    ``SliceConfig`` or ``VolumeConfig``; also :attr:`data_config`). train_config: a ``TrainConfig`` (or the dict
    if it no longer parses). kind: the name of the model's kind (:attr:`model_kind`: the kind object).
    diffusion: what the kind reads from its own entries (:meth:`~mddose.kinds.base.ModelKind.load_meta`: the
    ``GaussianDiffusion`` of a diffusion model, None for regression). meta: the whole config.json. raw_state:
    the raw (non-EMA) state dict if requested. ``slice_config=`` / ``volume_config=``: older spellings of
    ``inputs=``, kept as read-only views (the input config when it is of that type, else None).
    """

    def __init__(self, model: nn.Module, model_config: Any = None, inputs: Any = None, train_config: Any = None,
                 diffusion: Any = None, meta: dict | None = None, raw_state: dict[str, torch.Tensor] | None = None,
                 path: Path | None = None, kind: str = "diffusion", *, slice_config: Any = None,
                 volume_config: Any = None):
        self.model, self.model_config, self.train_config, self.diffusion = model, model_config, train_config, diffusion
        self.inputs = next((c for c in (inputs, slice_config, volume_config) if c is not None), None)
        self.meta, self.raw_state, self.path, self.kind = meta if meta is not None else {}, raw_state, path, kind

    @property
    def model_kind(self):
        """The :class:`~mddose.kinds.base.ModelKind` of :attr:`kind`."""
        from mddose.kinds import get_kind
        return get_kind(self.kind)

    @property
    def data_config(self):
        """The input config the model's inputs are built with (:attr:`inputs`)."""
        return self.inputs

    @property
    def slice_config(self):
        from mddose.data.inputs.slices import SliceConfig
        return self.inputs if isinstance(self.inputs, SliceConfig) else None

    @property
    def volume_config(self):
        from mddose.data.inputs.volume import VolumeConfig
        return self.inputs if isinstance(self.inputs, VolumeConfig) else None


def _check_kind_matches_model(cfg: dict, kind, where: Path, built: bool = False) -> None:
    """Refuse a config.json whose ``kind`` is not its model's (an edited kind or model name): one line, at load.
    ``built``: the caller brings the model (a checkpoint of an unregistered model has no model config)."""
    mdict = cfg.get("model")
    if built and mdict is None:
        return
    if not isinstance(mdict, dict):
        raise MddoseError("checkpoint has no model config (expected a JSON object under 'model')", where)
    from mddose.models.registry import available_models, kind_of

    name = mdict.get("model")
    if not isinstance(name, str) or name not in available_models():
        raise MddoseError(f"model {name!r} is not a model of this mddose (known: "
                          f"{', '.join(available_models())})", where)
    own = kind_of(name)
    if own.name != kind.name:
        raise MddoseError(f"kind {kind.name!r} does not match the model {name!r}, a {own.words} of kind "
                          f"{own.name!r} (an edited kind or model name?)", where)


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu", raw: bool = False,
                    model: nn.Module | None = None, reseal: bool = False) -> CheckpointBundle:
    """Load a checkpoint directory for prediction (EMA weights, eval mode).

    Every file is checked first (:func:`mddose.train.integrity.verify_files`: size, safetensors header and
    the SHA-256 recorded in config.json, also for the raw weights and the training state that prediction
    does not use), then the configs, and only then is the model built and loaded.

    Args:
        model: an already-built model to load into (default: built from config.json via the registry).
        raw: also return the raw (non-EMA) weights in ``raw_state``.
        reseal: accept a config.json that no longer matches its seal (``mddose export --reseal``).
    Raises:
        MddoseError: missing, truncated, damaged or replaced files, an unsupported format version, NaN or
        infinite weights, bad configs, or weights that do not fit the model — one line naming the file.
    """
    from mddose.train.config import TrainConfig

    path = Path(path)
    cfg = read_checkpoint_config(path, reseal=reseal)
    exported = cfg.get("export") == "prediction"
    if exported and raw:
        raise MddoseError("a prediction-only checkpoint has no raw (non-EMA) weights", path)
    where = path / "config.json"
    from mddose.kinds import all_kinds
    kinds = all_kinds()
    if cfg.get("kind", "diffusion") not in kinds:
        raise MddoseError(f"unknown model kind {cfg.get('kind')!r} (known: {', '.join(sorted(kinds))})", where)
    kind = kinds[cfg.get("kind", "diffusion")]
    if kind.weightless:         # a computed method (the prior dose): a config, no weights
        return CheckpointBundle(model=kind.model(cfg, str(where)), model_config=cfg.get("model"),
                                inputs=kind.load_inputs(cfg, where), meta=cfg, path=path, kind=kind.name)
    _check_kind_matches_model(cfg, kind, where, built=model is not None)
    verify_files(path, cfg, required=("ema.safetensors",) if exported else ("model.safetensors", "ema.safetensors"),
                 optional=() if exported else TRAIN_STATE_FILES)
    inputs = kind.load_inputs(cfg, where)
    extra = kind.load_meta(cfg, where)
    try:
        tcfg = TrainConfig.from_dict(cfg.get("train_config") or {}, inputs=inputs)
    except (MddoseError, TypeError):
        tcfg = cfg.get("train_config")
    if model is None:
        from mddose.models.registry import build_model_from_dict
        from mddose.train.config import GRID_FIELDS
        grid = getattr(inputs, "size", None)        # the model's grid fields, stored once as the data's size
        model = build_model_from_dict(cfg["model"], where=str(where),
                                      defaults={k: grid for k in GRID_FIELDS if grid is not None})
    ema_sd = _load_tensors(path / "ema.safetensors")
    load_state_dict_checked(model, ema_sd, path / "ema.safetensors")
    if raw:
        raw_sd = _load_tensors(path / "model.safetensors")
        check_state_dict(model, raw_sd, path / "model.safetensors")
    else:
        raw_sd = None
        if not exported:
            check_finite_file(path / "model.safetensors")
    model.to(device).eval()
    return CheckpointBundle(model=model, model_config=getattr(model, "config", cfg.get("model")), inputs=inputs,
                            train_config=tcfg, diffusion=extra, meta=cfg, raw_state=raw_sd, path=path, kind=kind.name)


def load_train_state(path: str | os.PathLike, *, model: nn.Module, ema: nn.Module,
                     optimizer: torch.optim.Optimizer, scaler=None,
                     noise_gen: torch.Generator | None = None) -> dict:
    """Restore everything needed to continue training; returns the JSON ``state`` scalars."""
    path = Path(path)
    cfg = read_checkpoint_config(path)
    for name in TRAIN_STATE_FILES:
        if not (path / name).exists():
            raise MddoseError("checkpoint file missing (cannot resume)", path / name)
    verify_files(path, cfg, required=("model.safetensors", "ema.safetensors", *TRAIN_STATE_FILES))
    load_state_dict_checked(unwrap(model), _load_tensors(path / "model.safetensors"), path / "model.safetensors")
    load_state_dict_checked(ema, _load_tensors(path / "ema.safetensors"), path / "ema.safetensors")
    tensors = _load_tensors(path / "train_state.safetensors")
    js = _read_json(path / "train_state.json")
    try:
        load_optimizer_state(optimizer, tensors, js["optimizer"])
        set_rng_state(tensors, js["rng"], noise_gen)
        if scaler is not None and scaler.is_enabled() and js.get("scaler"):
            scaler.load_state_dict(js["scaler"])
        state = js["state"]
        if not isinstance(state, dict):
            raise ValueError("'state' is not an object")
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MddoseError(f"inconsistent training state ({msg})", path) from None
    return state
