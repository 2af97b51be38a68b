"""The one way configs are read: frozen dataclasses from JSON objects, unknown keys refused, one cache root.

* :func:`dataclass_from_dict` — ``cls(**d)`` for a (frozen) dataclass, with lists turned into tuples for
  tuple-typed fields, unknown keys and non-object input refused with one line naming ``where``.
* :func:`read_json_object` — a JSON file that must hold an object; every failure is one line naming the file.
* :func:`check_number` — the one check of a number in a config (integer or finite number, bounds), used by every
  config of the package (train, data inputs, models, diffusion); :func:`check_int_fields` / :func:`check_int_tuple`
  apply it to fields of a model config.
* :func:`cache_root` — ``$MDDOSE_CACHE_DIR`` or ``~/.cache/mddose`` (patients, slices, compiled kernels).
"""

from __future__ import annotations

import dataclasses
import json
import math
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


def check_finite(value: Any, where: str, key: str = "") -> None:
    """Refuse a non-finite number (NaN, Infinity: Python's JSON reader takes them) anywhere in ``value`` (nested
    objects and lists included): one-line :class:`MddoseError` ``"{where}: {key.path} must be a finite number"``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise MddoseError(f"{where}: {key or 'value'} must be a finite number, got {value!r}")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, where, f"{key}[{i}]")


def check_number(where: str, key: str, v: Any, *, integer: bool = False, at_least: float | None = None,
                 above: float | None = None, below: float | None = None, hint: str = "") -> Any:
    """``v`` if it is an integer (``integer``) or a finite number, ``>= at_least``, ``> above`` and ``< below``;
    else a one-line :class:`MddoseError` ``"{where}: {key} must be an integer|a number[, got v]"`` or
    ``"... must be >= 1{hint}, got 0"`` (``where`` empty: no prefix). Booleans, strings and NaN are refused; an
    integer field takes no float."""
    head = f"{where}: {key}" if where else key
    number = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    if not number or (integer and not isinstance(v, int)):
        raise MddoseError(f"{head} must be {'an integer' if integer else 'a number'}, got {v!r}")
    for ok, rel, bound in ((at_least is None or v >= at_least, ">=", at_least), (above is None or v > above, ">", above),
                           (below is None or v < below, "<", below)):
        if not ok:
            raise MddoseError(f"{head} must be {rel} {bound}{hint}, got {v}")
    return v


def physical_memory() -> int:
    """Bytes of physical memory of this machine (16 GiB when the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 16 << 30


def human_bytes(n: float) -> str:
    """``n`` bytes as text: ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def int_at_least(low: int):
    """An argparse ``type``: an integer >= ``low`` (else argparse's one-line error naming the option, exit 2)."""
    import argparse

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {v}")
        return v

    parse.__name__ = f"integer >= {low}"
    return parse


def positive_number(text: str) -> float:
    """An argparse ``type``: a finite number > 0 (NaN, inf, 0 and negatives refused, naming the option)."""
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def check_int_fields(where: str, cfg: Any, names: Iterable[str], minimum: int | None = 1) -> None:
    """:func:`check_number` (integer ``>= minimum``) on every field of ``cfg`` named in ``names``."""
    for name in names:
        check_number(where, name, getattr(cfg, name), integer=True, at_least=minimum)


def check_int_tuple(where: str, cfg: Any, name: str, minimum: int = 1, allow_empty: bool = False) -> None:
    """Field ``name`` of the frozen ``cfg`` as a tuple of integers ``>= minimum`` (non-empty unless ``allow_empty``);
    else a one-line :class:`MddoseError`."""
    v = getattr(cfg, name)
    if not isinstance(v, (tuple, list)) or (not v and not allow_empty):
        raise MddoseError(f"{where}: {name} must be a list of integers >= {minimum}, got {v!r}")
    for i, x in enumerate(v):
        try:
            check_number(where, f"{name}[{i}]", x, integer=True, at_least=minimum)
        except MddoseError:
            raise MddoseError(f"{where}: {name} must be a list of integers >= {minimum}, got {v!r}") from None
    object.__setattr__(cfg, name, tuple(v))


def check_grid_size(where: str, grid: Any, levels: int) -> None:
    """The one check of a 3D model's ``grid_size`` (None: not known yet): an integer multiple of 2^(levels-1),
    at least twice that (every level halves it); else a one-line :class:`MddoseError`."""
    if grid is None:
        return
    check_number(where, "grid_size", grid, integer=True, at_least=1)
    mult = 2 ** (levels - 1)
    if grid % mult or grid < 2 * mult:
        raise MddoseError(f"{where}: grid_size must be a multiple of {mult} (2^(levels-1)) and at least {2 * mult}, "
                          f"got {grid}")


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
