"""Model kinds: one object per kind of model (:class:`~mddose.kinds.base.ModelKind`), see :mod:`mddose.kinds.base`.

Importing this package registers the built-in kinds — one line each below (adding a kind: one module and one
line here).
"""

from mddose.kinds.base import ModelKind, TrainData, all_kinds, get_kind, register_kind
from mddose.kinds import diffusion2d, prior, regression3d, tree  # noqa: E402,F401  (registers "diffusion", "prior",
#                                                                    "regression", "tree")

__all__ = ["ModelKind", "TrainData", "all_kinds", "get_kind", "register_kind"]
