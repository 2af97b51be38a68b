"""Integrity of checkpoint files: sizes, SHA-256 checksums, safetensors headers, finite weights.

:func:`mddose.train.checkpoint.save_checkpoint` records ``{"size": bytes, "sha256": hex}`` of every file
but ``config.json`` under ``"files"`` in ``config.json`` (:func:`file_record`). Before a checkpoint is used,
:func:`verify_files` checks every file of it that exists:

* each ``.safetensors`` file is a regular file whose header is valid and whose tensors exactly fill the data
  after it (:func:`safetensors_header`) — always, also for checkpoints written before checksums were
  recorded (those still load, with a warning, after these structural checks);
* with a record, its size and then its SHA-256 match the record (a truncated, replaced or damaged file
  is refused, whichever file it is — e.g. a random ``model.safetensors`` beside a valid EMA file).

:func:`seal` / :func:`check_seal`: ``config.json`` itself is covered too. Its ``"config_sha256"`` entry is the
SHA-256 of every other entry (the ``"files"`` record included, so the seal covers the weights through their
checksums), written as canonical JSON (sorted keys, no spaces: a layout-only change of the file does not matter;
any changed value, key or bit does). An edited or damaged ``config.json`` is refused; a deliberate edit is
re-sealed into a new folder with ``mddose export SRC DST --reseal`` (:func:`mddose.train.checkpoint.export_for_prediction`),
which still verifies every weight file against its checksum and rebuilds the model from the edited config.
A checkpoint written before seals existed (no ``"config_sha256"``) still loads, with a warning.

:func:`check_finite` / :func:`check_finite_file` refuse NaN or infinite weights. Every problem is one line
(:class:`MddoseError`) naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Iterable, Mapping

import torch

from mddose.errors import MddoseError
from mddose.utils.log import logger

#: bytes per element of each safetensors dtype
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
               "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
#: a larger header is not one that mddose wrote (safetensors itself refuses headers over 100 MB)
MAX_HEADER = 100_000_000
_CHUNK = 1 << 20


#: the key of config.json holding its own seal
SEAL_KEY = "config_sha256"
#: how to re-seal a deliberate edit (named in the refusal)
RESEAL_HINT = "if the edit was deliberate, re-seal it into a new folder: mddose export CHECKPOINT NEW --reseal"


def config_digest(cfg: Mapping) -> str:
    """SHA-256 of the canonical JSON of ``cfg`` without its seal (sorted keys, no whitespace, ASCII)."""
    body = {k: v for k, v in cfg.items() if k != SEAL_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def seal(cfg: Mapping) -> dict:
    """``cfg`` with its seal (``"config_sha256"``), as written to a checkpoint's config.json."""
    return {**{k: v for k, v in cfg.items() if k != SEAL_KEY}, SEAL_KEY: config_digest(cfg)}


def check_seal(cfg: Mapping, config_path: Path, *, reseal: bool = False) -> bool:
    """Refuse a ``config.json`` whose values do not match its seal (one line naming the file and the way to
    re-seal). ``reseal``: accept it (with a warning) — the caller writes a new seal. Returns whether it was sealed;
    an unsealed (older) one passes with a warning."""
    recorded = cfg.get(SEAL_KEY)
    if recorded is None:
        logger.warning("%s: checkpoint config written without a seal (older mddose): its values are not checked",
                       config_path)
        return False
    if isinstance(recorded, str) and recorded == config_digest(cfg):
        return True
    if reseal:
        logger.warning("%s: does not match its seal (edited); re-sealing it as it is now (--reseal)", config_path)
        return True
    raise MddoseError(f"checkpoint config does not match the checksum sealed when it was written (edited or "
                      f"damaged); {RESEAL_HINT}", config_path)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path) -> dict:
    """``{"size": bytes, "sha256": hex}`` of a file, as recorded in a checkpoint's ``config.json``."""
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _regular_file(path: Path) -> int:
    """Size of ``path``; missing or not a regular file (a FIFO would block the reader) → MddoseError."""
    if not path.exists():
        raise MddoseError("checkpoint file missing", path)
    if not path.is_file():
        raise MddoseError("checkpoint file is not a regular file", path)
    try:
        return path.stat().st_size
    except OSError as exc:
        raise MddoseError(f"cannot read checkpoint file ({exc.strerror or exc})", path) from None


def safetensors_header(path: Path) -> dict:
    """The validated JSON header of a safetensors file (tensor name → dtype, shape, data_offsets).

    The header length must fit the file, the header must be a JSON object, every tensor's byte range must
    match its dtype and shape, and the ranges must fill the data section exactly (no holes, nothing cut off).
    """
    size = _regular_file(path)
    if size < 8:
        raise MddoseError(f"corrupt or truncated safetensors file ({size} bytes)", path)
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n > min(size - 8, MAX_HEADER):
                raise MddoseError(f"corrupt or truncated safetensors file (header of {n} bytes in a file of "
                                  f"{size})", path)
            raw = fh.read(n)
    except OSError as exc:
        raise MddoseError(f"cannot read checkpoint file ({exc.strerror or exc})", path) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MddoseError("corrupt safetensors file (its header is not JSON)", path) from None
    if not isinstance(header, dict):
        raise MddoseError("corrupt safetensors file (its header is not a JSON object)", path)
    data_len, ranges = size - 8 - n, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            itemsize = DTYPE_SIZES[entry["dtype"]]
            shape = [int(s) for s in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
            ok = all(s >= 0 for s in shape) and 0 <= begin <= end and end - begin == itemsize * math.prod(shape)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise MddoseError(f"corrupt safetensors file (bad header entry for tensor {name!r})", path)
        ranges.append((begin, end))
    covered = 0
    for begin, end in sorted(ranges):
        if begin != covered:
            break
        covered = end
    if covered != data_len:
        need = max((e for _, e in ranges), default=0)
        what = f"its tensors need {need} bytes of data, it holds {data_len}" if need > data_len else \
            f"its tensors do not fill its {data_len} bytes of data exactly"
        raise MddoseError(f"corrupt or truncated safetensors file ({what})", path)
    return header


def _records(cfg: Mapping, config_path: Path) -> dict[str, dict] | None:
    """The ``"files"`` record of a checkpoint's config.json, validated (None for an old checkpoint)."""
    rec = cfg.get("files")
    if rec is None:
        return None
    good = isinstance(rec, dict) and all(
        isinstance(r, dict) and isinstance(r.get("size"), int) and not isinstance(r.get("size"), bool)
        and isinstance(r.get("sha256"), str) and len(r["sha256"]) == 64 for r in rec.values())
    if not good:
        raise MddoseError("malformed 'files' record (expected name → {size, sha256})", config_path)
    return rec


def verify_files(path: Path, cfg: Mapping, required: Iterable[str], optional: Iterable[str] = ()) -> None:
    """Check the files of the checkpoint directory ``path`` before anything is loaded (see the module docstring).

    Args:
        cfg: the checkpoint's config.json (its ``"files"`` record, if any, holds sizes and checksums).
        required: file names that must exist; optional: names checked only when they exist (training state
            may be deleted from a checkpoint used for prediction only).
    Raises:
        MddoseError: one line naming the first file that is missing, not a regular file, of the wrong size,
        not a valid safetensors file, or whose checksum does not match.
    """
    records = _records(cfg, path / "config.json")
    names = list(required) + [n for n in optional if (path / n).exists() or (path / n).is_symlink()]
    if records is None:
        logger.warning("%s: checkpoint written without checksums (older mddose): its files are checked for "
                       "structure only", path)
    for name in names:
        f = path / name
        size = _regular_file(f)
        rec = None if records is None else records.get(name)
        if records is not None and rec is None:
            raise MddoseError("file is not listed in the checkpoint's config.json (a file from another "
                              "checkpoint?)", f)
        if rec is not None and size != rec["size"]:
            raise MddoseError(f"checkpoint file has {size} bytes, {rec['size']} were written (truncated or "
                              f"replaced)", f)
        if name.endswith(".safetensors"):
            safetensors_header(f)
        if rec is not None:
            try:
                digest = sha256_file(f)
            except OSError as exc:
                raise MddoseError(f"cannot read checkpoint file ({exc.strerror or exc})", f) from None
            if digest != rec["sha256"]:
                raise MddoseError("checkpoint file does not match the SHA-256 checksum recorded when it was "
                                  "written (damaged or replaced)", f)


def check_finite(tensors: Mapping[str, torch.Tensor], where: Path) -> None:
    """Refuse NaN or infinite values in the floating-point tensors of a state dict."""
    for key, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise MddoseError(f"weights contain NaN or infinite values (tensor {key!r})", where)


def check_finite_file(path: Path) -> None:
    """:func:`check_finite` over a safetensors file, one tensor at a time (nothing kept in memory)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                check_finite({key: fh.get_tensor(key)}, path)
    except MddoseError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corruption
        raise MddoseError(f"corrupt or truncated safetensors file ({str(exc).splitlines()[0]})", path) from None


