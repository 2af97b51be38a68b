"""Logging helpers: one package logger and a "log once" helper for backend choices."""

from __future__ import annotations

import logging

logger = logging.getLogger("mddose")
_seen: set[str] = set()


def log_once(key: str, message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    if key not in _seen:
        _seen.add(key)
        logger.log(level, message)
