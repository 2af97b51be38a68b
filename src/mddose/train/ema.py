"""Exponential moving average of a model's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """EMA copy of ``model`` (parameters averaged, buffers copied).

    ``decay = 0`` keeps an exact copy. With ``warmup`` the effective decay after ``n`` updates is
    ``min(decay, (1 + n) / (10 + n))`` so that short runs do not keep near-initial weights.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.num_updates = float(decay), bool(warmup), 0

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for e, p in zip(self.module.parameters(), model.parameters()):
            if d == 0.0:
                e.copy_(p)
            else:
                e.lerp_(p.detach().to(e.dtype), 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)
        self.num_updates += 1
