"""C3D — cascade of two 3D U-Nets (Liu et al., Med Phys 48:5574, 2021; OpenKBP challenge winner).

Layout, from the authors' code (LSL000UD/RTDosePrediction, ``Src/C3D/model.py``), for ``cond (B, C, D, H, W)``
with C = in_channels (9: PTV, 7 OARs, CT) and n = 5 levels (D, H, W divisible by 2^(n-1) = 16)::

    U-Net A   UNet3d(C, widths_a = 16/32/64/128/256)             cond            → f_A (B, 16, D, H, W)
    head A    Conv3d 1³ 16 → 1 (bias)                            f_A             → out_A (B, 1, D, H, W)
    U-Net B   UNet3d(16 + C = 25, widths_b = 32/64/128/256/512)  cat(f_A, cond)  → f_B (B, 32, D, H, W)
    head B    Conv3d 1³ 32 → 1 (bias)                            f_B             → out_B (B, 1, D, H, W)

U-Net B sees A's last decoder *features* (not A's dose) concatenated with the inputs. Each U-Net
(:class:`mddose.nn.conv3d.UNet3d`): unit = Conv3d 3³ → InstanceNorm3d(affine) → ReLU; encoder level 1 two
units, levels 2–5 a stride-2 unit then a unit (no pooling); decoder trilinear ×2 (align_corners) → unit to
the lower width, concat the skip, two units (one at level 1). Kaiming-uniform init and zero bias in the
U-Nets; the two 1×1×1 heads keep PyTorch's default init, as in the authors' code.

Outputs are dose / 70 with no final activation. ``forward`` returns out_B only (inference uses B, head A is
not run); ``training_outputs`` returns ``[(0.5, out_A), (1.0, out_B)]`` (loss 0.5·L1(A) + L1(B) over the
possible-dose mask, applied by the trainer).

Parameters (in_channels 9, measured): paper 32,354,402 (A 6,471,713 + B 25,882,689; the spec's
32.35 M = 6.47 M + 25.88 M); small 2,027,210; tiny 36,230.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mddose.errors import MddoseError
from mddose.utils.config import check_grid_size, check_int_fields, check_int_tuple
from mddose.models.registry import ModelConfig, register_model
from mddose.nn.conv3d import UNet3d, add_residual, check_residual_channel, check_volume

NAME = "c3d"


@dataclass(frozen=True)
class C3DConfig(ModelConfig):
    """Hyper-parameters of C3D (defaults = the paper's network, 32,354,402 parameters with 9 inputs).

    in_channels: input channels C (9 for OpenKBP: PTV, 7 OARs, CT). out_channels: 1 (dose / 70).
    widths_a / widths_b: channels per level of U-Net A / U-Net B (same number of levels, level 1 first).
    grid_size: edge of the cubic volume the model is trained on and predicts at — the data's (``volume.size``,
    written here by the trainer and by the checkpoint loader); None = not known yet. A preset recommends one
    (``paper``: 128 = OpenKBP's native grid; ``small``: a coarser 64³, CPU-sized) as the default of
    ``volume.size``; any grid divisible by 2^(levels-1) is accepted by the network itself.
    residual_channel: the residual form — the input channel (the prior dose) added to both outputs, so that the
    networks predict dose minus prior; None = off. Written by the trainer from ``volume.residual``.
    """

    in_channels: int = 9
    out_channels: int = 1
    widths_a: tuple[int, ...] = (16, 32, 64, 128, 256)
    widths_b: tuple[int, ...] = (32, 64, 128, 256, 512)
    grid_size: int | None = None
    residual_channel: int | None = None

    def __post_init__(self):
        where = "c3d config"
        check_residual_channel(where, self.residual_channel, self.in_channels)
        for name in ("widths_a", "widths_b"):
            check_int_tuple(where, self, name)
        if len(self.widths_a) != len(self.widths_b):
            raise MddoseError(f"{where}: widths_a and widths_b must have the same number of levels, "
                              f"got {len(self.widths_a)} and {len(self.widths_b)}")
        check_int_fields(where, self, ("in_channels", "out_channels"))
        check_grid_size(where, self.grid_size, self.levels)

    @property
    def levels(self) -> int:
        return len(self.widths_a)


class C3D(nn.Module):
    """Cascade of two 3D U-Nets: ``model(cond (B, C, D, H, W)) -> dose/70 (B, 1, D, H, W)`` (U-Net B's output).

    See the module docstring for the layout. Parameters (in_channels 9): paper 32,354,402, small 2,027,210,
    tiny 36,230.
    """

    #: loss weights of (out_A, out_B) in :meth:`training_outputs` (the authors' 0.5·L1(A) + L1(B))
    LOSS_WEIGHTS = (0.5, 1.0)

    def __init__(self, cfg: C3DConfig):
        super().__init__()
        self.config = cfg
        self.net_a = UNet3d(cfg.in_channels, cfg.widths_a)
        self.net_b = UNet3d(cfg.widths_a[0] + cfg.in_channels, cfg.widths_b)
        self.head_a = nn.Conv3d(cfg.widths_a[0], cfg.out_channels, kernel_size=1, bias=True)
        self.head_b = nn.Conv3d(cfg.widths_b[0], cfg.out_channels, kernel_size=1, bias=True)

    def _features(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        check_volume(NAME, cond, self.config.in_channels, self.config.levels)
        f_a = self.net_a(cond)                                   # (B, widths_a[0], D, H, W)
        f_b = self.net_b(torch.cat([f_a, cond], dim=1))          # (B, widths_b[0], D, H, W)
        return f_a, f_b

    def forward(self, cond: Tensor) -> Tensor:
        """cond: (B, C, D, H, W) → out_B (B, out_channels, D, H, W); head A is not evaluated."""
        return add_residual(self.head_b(self._features(cond)[1]), cond, self.config.residual_channel)

    def training_outputs(self, cond: Tensor) -> list[tuple[float, Tensor]]:
        """cond: (B, C, D, H, W) → ``[(0.5, out_A), (1.0, out_B)]``, each (B, out_channels, D, H, W)."""
        f_a, f_b = self._features(cond)
        w_a, w_b = self.LOSS_WEIGHTS
        k = self.config.residual_channel
        return [(w_a, add_residual(self.head_a(f_a), cond, k)), (w_b, add_residual(self.head_b(f_b), cond, k))]


PRESETS = {
    # the authors' network: 32,354,402 parameters
    "paper": {"widths_a": (16, 32, 64, 128, 256), "widths_b": (32, 64, 128, 256, 512), "grid_size": 128},
    # quarter widths, same 5-level layout, 2,027,210 parameters; trains on a coarser 64³ grid on a CPU
    "small": {"widths_a": (4, 8, 16, 32, 64), "widths_b": (8, 16, 32, 64, 128), "grid_size": 64},
    # for tests: 4 levels, 36,230 parameters, 16³ volumes
    "tiny": {"widths_a": (2, 4, 8, 8), "widths_b": (4, 4, 8, 8), "grid_size": 16},
}


@register_model(NAME, C3DConfig, presets=PRESETS, kind="regression", dims=3, fidelity="official-code",
                source="Liu et al., Med Phys 48:5574 (2021), OpenKBP winner; code LSL000UD/RTDosePrediction",
                notes="small: trains on a 64³ grid on CPU")
def build_c3d(cfg: C3DConfig) -> C3D:
    """Builder registered as ``"c3d"``."""
    return C3D(cfg)
