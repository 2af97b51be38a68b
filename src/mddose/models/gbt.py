"""A gradient-boosted tree ensemble over per-voxel features, held as tensors (kind ``"tree"``).

The simplest strong baseline of dose prediction: no image model, one row of geometric features per voxel
(:mod:`mddose.data.inputs.features`), boosted regression trees. Fitted with scikit-learn's
``HistGradientBoostingRegressor`` (the optional extra ``mddose[tree]``; :mod:`mddose.kinds.tree`), then exported
into this module's buffers, so that a checkpoint is safetensors + JSON like every other model (nothing pickled)
and prediction needs no scikit-learn.

Layout: the trees' nodes are concatenated (``nodes`` in all); tree ``i`` starts at ``roots[i]``. Node ``n``
sends a row ``x`` to ``left[n]`` when ``x[feature[n]] <= threshold[n]``, else to ``right[n]``; a leaf points to
itself on both sides, so every row walks exactly ``depth`` steps and lands on its leaf in
each tree; the prediction is ``bias + Σ_trees value[leaf]`` (scikit-learn's leaf values already carry the
learning rate). Thresholds are stored in float32 rounded **down** from scikit-learn's float64 ones, so that
``x <= threshold`` on float32 features splits exactly as scikit-learn does.

Interface (the 3D regression models' shapes): ``model(cond (B, F, D, H, W)) -> (B, 1, D, H, W)``, every voxel a
row; :meth:`TreeEnsemble.predict_rows` ``(N, F) -> (N,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mddose.errors import MddoseError
from mddose.models.registry import ModelConfig, register_model

#: Losses of the fit (scikit-learn's names): the absolute error is what the dose score measures.
LOSSES = ("absolute_error", "squared_error")
#: Rows walked through the trees at once (bounds the (rows, trees) index tensors' memory).
CHUNK_ROWS = 32768


@dataclass(frozen=True)
class GBTConfig(ModelConfig):
    """The fit's hyperparameters (scikit-learn's ``HistGradientBoostingRegressor`` names) and the fitted shape.

    ``trees``, ``nodes``, ``depth``: the size of the fitted ensemble (0 before fitting: the module then predicts
    its ``bias``, 0); they size the buffers a checkpoint's weights fill.
    """

    in_channels: int = 2
    loss: str = "absolute_error"
    max_iter: int = 300
    learning_rate: float = 0.1
    max_leaf_nodes: int = 63
    min_samples_leaf: int = 200
    l2_regularization: float = 0.0
    max_bins: int = 255
    trees: int = 0
    nodes: int = 0
    depth: int = 0

    def __post_init__(self) -> None:
        from mddose.utils.config import check_number

        w = "gbt config"
        for k, lo in (("in_channels", 1), ("max_iter", 1), ("max_leaf_nodes", 2), ("min_samples_leaf", 1),
                      ("trees", 0), ("nodes", 0), ("depth", 0)):
            check_number(w, k, getattr(self, k), integer=True, at_least=lo)
        check_number(w, "max_bins", self.max_bins, integer=True, at_least=2, below=256)
        check_number(w, "learning_rate", self.learning_rate, above=0)
        check_number(w, "l2_regularization", self.l2_regularization, at_least=0)
        if self.loss not in LOSSES:
            raise MddoseError(f"{w}: loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if (self.trees == 0) != (self.nodes == 0) or self.nodes < self.trees:
            raise MddoseError(f"{w}: trees {self.trees} and nodes {self.nodes} do not describe an ensemble")


class TreeEnsemble(nn.Module):
    """Boosted regression trees as buffers (see the module docstring); no parameters, nothing to train by
    gradient."""

    def __init__(self, cfg: GBTConfig):
        super().__init__()
        self.n_features = cfg.in_channels
        self.depth = cfg.depth
        n = cfg.nodes
        self.register_buffer("feature", torch.zeros(n, dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros(n, dtype=torch.float32))
        self.register_buffer("left", torch.arange(n, dtype=torch.int64))
        self.register_buffer("right", torch.arange(n, dtype=torch.int64))
        self.register_buffer("value", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("roots", torch.zeros(cfg.trees, dtype=torch.int64))
        self.register_buffer("bias", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def predict_rows(self, x: Tensor) -> Tensor:
        """x: (N, F) float → (N,) float32 predictions."""
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise MddoseError(f"tree ensemble: expected rows of {self.n_features} features, got {tuple(x.shape)}")
        x = x.to(torch.float32)
        out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
        for s in range(0, x.shape[0], CHUNK_ROWS):
            rows = x[s:s + CHUNK_ROWS]
            node = self.roots.expand(rows.shape[0], -1)                  # (n, T)
            for _ in range(self.depth):
                goes_left = rows.gather(1, self.feature[node]) <= self.threshold[node]
                node = torch.where(goes_left, self.left[node], self.right[node])
            out[s:s + CHUNK_ROWS] = self.value[node].sum(dim=1)
        return (out + self.bias).to(torch.float32)

    def forward(self, cond: Tensor) -> Tensor:
        """cond: (B, F, D, H, W) → (B, 1, D, H, W), one row per voxel."""
        b, f, *spatial = cond.shape
        rows = cond.movedim(1, -1).reshape(-1, f)
        return self.predict_rows(rows).reshape(b, *spatial).unsqueeze(1)

    def training_outputs(self, cond: Tensor) -> list[tuple[float, Tensor]]:
        """The regression models' interface: ``[(1.0, model(cond))]``."""
        return [(1.0, self(cond))]


@register_model("gbt", GBTConfig, presets={"tiny": {"max_iter": 10, "max_leaf_nodes": 7, "min_samples_leaf": 20},
                                           "small": {"max_iter": 100, "max_leaf_nodes": 31},
                                           "default": {}},
                kind="tree", dims=3, fidelity="reconstruction",
                source="gradient-boosted trees on per-voxel geometric features (the simplest strong baseline; "
                       "scikit-learn's HistGradientBoostingRegressor)",
                notes="fitted, not trained by gradient; needs the extra mddose[tree] to train, nothing to predict")
def build_gbt(cfg: GBTConfig) -> nn.Module:
    return TreeEnsemble(cfg)
