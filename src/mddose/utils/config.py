"""The one way configs are read: frozen dataclasses from JSON objects, unknown keys refused, one cache root.

* :func:`dataclass_from_dict` — ``cls(**d)`` for a (frozen) dataclass, with lists turned into tuples for
  tuple-typed fields, unknown keys and non-object input refused with one line naming ``where``.
* :func:`read_json_object` — a JSON file that must hold an object; every failure is one line naming the file.
* :func:`cache_root` — ``$MDDOSE_CACHE_DIR`` or ``~/.cache/mddose`` (patients, slices, compiled kernels).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, TypeVar

from mddose.errors import MddoseError

T = TypeVar("T")


def check_keys(d: dict, allowed: Iterable[str], where: str, prefix: str = "") -> None:
    """Raise a one-line :class:`MddoseError` naming the keys of ``d`` not in ``allowed``."""
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise MddoseError(f"{where}: unknown key(s) {', '.join(prefix + str(k) for k in unknown)}")


def dataclass_from_dict(cls: type[T], d: Any, where: str, *, prefix: str = "", ignore: Iterable[str] = ()) -> T:
    """Build dataclass ``cls`` from the JSON object ``d``.

    Args:
        d: must be a dict; keys must be fields of ``cls`` (``ignore``: keys dropped silently, e.g. ``"model"``).
        where: names the file or section in error messages.
        prefix: prepended to key names in messages (``"data."`` for a nested section).
    Lists become tuples (frozen configs keep tuples); the dataclass's own ``__post_init__`` validates values.
    A ``TypeError`` from the constructor (e.g. a missing required field) becomes a one-line MddoseError.
    """
    if not isinstance(d, dict):
        raise MddoseError(f"{where}: {prefix.rstrip('.') or 'config'} must be a JSON object, got {type(d).__name__}")
    skip = set(ignore)
    d = {k: v for k, v in d.items() if k not in skip}
    check_keys(d, (f.name for f in dataclasses.fields(cls)), where, prefix)
    conv = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    try:
        return cls(**conv)
    except TypeError as exc:
        raise MddoseError(f"{where}: {exc}") from None


def read_json_object(path: str | os.PathLike, what: str = "JSON file") -> dict:
    """The JSON object in ``path``; missing, unreadable, malformed or non-object → one-line MddoseError."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():     # a FIFO or device would block or never end
        raise MddoseError(f"{what} is not a regular file", path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MddoseError(f"{what} not found", path) from None
    except IsADirectoryError:
        raise MddoseError(f"{what} is a directory", path) from None
    except PermissionError:
        raise MddoseError(f"{what} is not readable (permission denied)", path) from None
    except UnicodeDecodeError:
        raise MddoseError(f"{what} is not UTF-8 text", path) from None
    except json.JSONDecodeError as exc:
        raise MddoseError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})", path) from None
    except OSError as exc:
        raise MddoseError(f"cannot read {what} ({exc.strerror or exc})", path) from None
    if not isinstance(raw, dict):
        raise MddoseError(f"{what} must hold a JSON object, got {type(raw).__name__}", path)
    return raw


def cache_root() -> Path:
    """``$MDDOSE_CACHE_DIR`` or ``~/.cache/mddose`` — the root of every mddose cache."""
    env = os.environ.get("MDDOSE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mddose"
