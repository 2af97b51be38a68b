"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint directory holds::

    model.safetensors        raw model weights (state_dict)
    ema.safetensors          EMA weights (what prediction uses)
    config.json              format/version, mddose version, model kind and config (model.config.to_dict()),
                             data config (``slice_config`` of 2D models or ``volume_config`` of 3D ones),
                             train config, diffusion config (None for regression models), step, epoch
    train_state.safetensors  optimizer tensors, RNG states (torch CPU/CUDA, noise generator)
    train_state.json         optimizer scalars/param groups, GradScaler, EMA counter, NumPy and Python
                             RNG states, step/epoch/position, best score

Directories are written with :func:`mddose.utils.fs.atomic_dir`, so a killed run leaves either the
old or the new checkpoint. :func:`load_checkpoint` validates everything and raises one-line
:class:`MddoseError` messages; ``torch.load`` is never used.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mddose.errors import MddoseError
from mddose.utils.fs import atomic_dir, atomic_write

FORMAT = "mddose-checkpoint"
FORMAT_VERSION = 1
FILES = ("model.safetensors", "ema.safetensors", "config.json", "train_state.safetensors", "train_state.json")
WEIGHT_FILES = ("model.safetensors", "ema.safetensors", "config.json")


# ---------------------------------------------------------------------------- small I/O helpers
def _cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file
    save_file(_cpu(tensors), str(path))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    if not path.is_file():
        raise MddoseError("checkpoint file missing", path)
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncation/corruption
        raise MddoseError(f"corrupt or truncated safetensors file ({str(exc).splitlines()[0]})", path) from None


def _write_json(obj: Any, path: Path) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise MddoseError("checkpoint file missing", path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MddoseError(f"unreadable JSON ({exc})", path) from None


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


def checkpoint_config(model: nn.Module, *, data_config: dict[str, dict], train_config: dict,
                      diffusion: dict | None, step: int, epoch: int, kind: str = "diffusion") -> dict:
    """config.json of a checkpoint. ``data_config``: ``{"slice_config": {...}}`` (2D) or
    ``{"volume_config": {...}}`` (3D); ``kind``: the model's registry kind."""
    from mddose import __version__
    mcfg = getattr(unwrap(model), "config", None)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "mddose_version": __version__, "kind": kind,
            "model": mcfg.to_dict() if mcfg is not None else None, **data_config,
            "train_config": train_config, "diffusion": diffusion, "step": int(step), "epoch": int(epoch)}


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, ema: nn.Module, config: dict,
                    optimizer: torch.optim.Optimizer | None = None, scaler=None,
                    noise_gen: torch.Generator | None = None, state: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (replacing an existing one only once complete).

    Args:
        config: from :func:`checkpoint_config`. state: JSON scalars (step, epoch, position, ...).
    """
    path = Path(path)
    with atomic_dir(path, force=True) as tmp:
        _save_tensors(unwrap(model).state_dict(), tmp / "model.safetensors")
        _save_tensors(unwrap(ema).state_dict(), tmp / "ema.safetensors")
        _write_json(config, tmp / "config.json")
        if optimizer is not None:
            t_opt, j_opt = optimizer_state(optimizer)
            t_rng, j_rng = rng_state(noise_gen)
            _save_tensors({**t_opt, **t_rng}, tmp / "train_state.safetensors")
            js = {"optimizer": j_opt, "rng": j_rng, "state": state or {},
                  "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
            _write_json(js, tmp / "train_state.json")
    return path


# ---------------------------------------------------------------------------- load
def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """config.json of a checkpoint, validated (format, version)."""
    path = Path(path)
    if not path.is_dir():
        raise MddoseError("checkpoint directory not found", path)
    cfg = _read_json(path / "config.json")
    if cfg.get("format") != FORMAT:
        raise MddoseError(f"not an mddose checkpoint (format {cfg.get('format')!r})", path / "config.json")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise MddoseError(f"checkpoint format version {cfg.get('format_version')!r} is not supported "
                          f"(this mddose reads version {FORMAT_VERSION})", path / "config.json")
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


@dataclass
class CheckpointBundle:
    """What :func:`load_checkpoint` returns.

    model: EMA weights, eval mode. raw_state: the raw (non-EMA) state dict if requested.
    kind: ``"diffusion"`` (2D denoiser on slices) or ``"regression"`` (3D model on volumes).
    slice_config: the ``SliceConfig`` of a 2D model (else None). volume_config: the ``VolumeConfig`` of a
    3D model (else None). train_config: a ``TrainConfig`` (or the dict if it no longer parses).
    diffusion: GaussianDiffusion (None for regression). meta: the whole config.json.
    """

    model: nn.Module
    model_config: Any
    slice_config: Any
    train_config: Any
    diffusion: Any
    meta: dict
    raw_state: dict[str, torch.Tensor] | None = None
    path: Path | None = field(default=None)
    kind: str = "diffusion"
    volume_config: Any = None

    @property
    def data_config(self):
        """The SliceConfig or VolumeConfig the model's inputs are built with."""
        return self.volume_config if self.kind == "regression" else self.slice_config


def _slice_config(d: dict | None):
    if d is None:
        return None
    try:
        from mddose.data.slices import SliceConfig
    except ImportError:
        return d
    return slice_config_from_dict(SliceConfig, d)


def slice_config_from_dict(cls, d: dict):
    """``cls(**d)`` with lists → tuples (frozen dataclass fields), unknown keys → MddoseError."""
    if hasattr(cls, "from_dict"):
        return cls.from_dict(d)
    import dataclasses
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise MddoseError(f"slice config: unknown key(s) {', '.join(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu", raw: bool = False,
                    model: nn.Module | None = None) -> CheckpointBundle:
    """Load a checkpoint directory for prediction (EMA weights, eval mode).

    Args:
        model: an already-built model to load into (default: built from config.json via the registry).
        raw: also return the raw (non-EMA) weights in ``raw_state``.
    Raises:
        MddoseError: missing files, truncated/corrupt safetensors, unsupported format version, or
        weights that do not fit the model.
    """
    from mddose.diffusion import GaussianDiffusion
    from mddose.train.config import TrainConfig

    path = Path(path)
    cfg = read_checkpoint_config(path)
    for name in WEIGHT_FILES:
        if not (path / name).is_file():
            raise MddoseError("checkpoint file missing", path / name)
    if model is None:
        if not cfg.get("model"):
            raise MddoseError("checkpoint has no model config", path / "config.json")
        from mddose.models.registry import build_model_from_dict
        model = build_model_from_dict(cfg["model"], where=str(path / "config.json"))
    ema_sd = _load_tensors(path / "ema.safetensors")
    raw_sd = _load_tensors(path / "model.safetensors") if raw else None
    load_state_dict_checked(model, ema_sd, path / "ema.safetensors")
    if raw_sd is not None:
        check_state_dict(model, raw_sd, path / "model.safetensors")
    model.to(device).eval()
    try:
        tcfg = TrainConfig.from_dict(cfg.get("train_config") or {})
    except (MddoseError, TypeError):
        tcfg = cfg.get("train_config")
    kind = cfg.get("kind", "diffusion")
    if kind == "regression":
        from mddose.data.volume import VolumeConfig
        vol = cfg.get("volume_config")
        if not isinstance(vol, dict):
            raise MddoseError("checkpoint of a 3D model has no volume_config", path / "config.json")
        return CheckpointBundle(model=model, model_config=getattr(model, "config", cfg.get("model")),
                                slice_config=None, train_config=tcfg, diffusion=None, meta=cfg, raw_state=raw_sd,
                                path=path, kind=kind, volume_config=VolumeConfig.from_dict(vol))
    if kind != "diffusion":
        raise MddoseError(f"unknown model kind {kind!r}", path / "config.json")
    diffusion = GaussianDiffusion(**(cfg.get("diffusion") or {}))
    return CheckpointBundle(model=model, model_config=getattr(model, "config", cfg.get("model")),
                            slice_config=_slice_config(cfg.get("slice_config")), train_config=tcfg,
                            diffusion=diffusion, meta=cfg, raw_state=raw_sd, path=path)


def load_train_state(path: str | os.PathLike, *, model: nn.Module, ema: nn.Module,
                     optimizer: torch.optim.Optimizer, scaler=None,
                     noise_gen: torch.Generator | None = None) -> dict:
    """Restore everything needed to continue training; returns the JSON ``state`` scalars."""
    path = Path(path)
    read_checkpoint_config(path)
    for name in FILES:
        if not (path / name).is_file():
            raise MddoseError("checkpoint file missing (cannot resume)", path / name)
    load_state_dict_checked(unwrap(model), _load_tensors(path / "model.safetensors"), path / "model.safetensors")
    load_state_dict_checked(ema, _load_tensors(path / "ema.safetensors"), path / "ema.safetensors")
    tensors = _load_tensors(path / "train_state.safetensors")
    js = _read_json(path / "train_state.json")
    try:
        load_optimizer_state(optimizer, tensors, js["optimizer"])
        set_rng_state(tensors, js["rng"], noise_gen)
        if scaler is not None and scaler.is_enabled() and js.get("scaler"):
            scaler.load_state_dict(js["scaler"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise MddoseError(f"inconsistent training state ({str(exc).splitlines()[0]})", path) from None
    return js["state"]
