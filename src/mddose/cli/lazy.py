"""Help texts computed from the registries only when help is shown, so that building the parser stays quick.

argparse expands an option's help with ``help % params`` when it prints it; :class:`LazyHelp` computes its text
there (importing the registries: torch and every model) instead of when the parser is built.
"""

from __future__ import annotations

from typing import Callable


class LazyHelp(str):
    """A help string whose text is ``make()``, computed when argparse formats it."""

    def __new__(cls, make: Callable[[], str]) -> "LazyHelp":
        self = super().__new__(cls, "…")
        self._make = make
        return self

    def __mod__(self, params) -> str:
        return self._make() % params


def option_help(kind: str, name: str, text: str | Callable[[], str]) -> LazyHelp:
    """``text`` (or ``text()``) + the models of ``kind`` and option ``name``'s default there (the kind's one
    default)."""
    def make() -> str:
        from mddose.kinds import get_kind
        from mddose.models import available_models, model_info

        models = ", ".join(m for m in available_models() if model_info(m).kind == kind)
        default = get_kind(kind).options[name]
        text_ = text() if callable(text) else text
        return f"{text_} ({models}; default: the checkpoint's, else {default!r})".replace("%", "%%")
    return LazyHelp(make)


def models_help(text: str) -> LazyHelp:
    """``text`` + every registered model with its kind, e.g. ``(md-dose: 2D diffusion model, ...)``."""
    def make() -> str:
        from mddose.models import available_models, kind_of

        models = ", ".join(f"{m}: {kind_of(m).words}" for m in available_models())
        return f"{text} (models: {models})".replace("%", "%%")
    return LazyHelp(make)
