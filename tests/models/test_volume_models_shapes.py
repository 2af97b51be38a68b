"""The 3D regression models are fully convolutional: any (D, H, W) with sides multiples of 2^(levels-1), not only
cubes (what whole-crop prediction at full resolution needs)."""

from __future__ import annotations

import pytest
import torch

from mddose.kinds.regression3d import input_multiple
from mddose.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name,multiple", [("hd-unet", 4), ("c3d", 8)])
def test_non_cubic_inputs(name, multiple):
    torch.manual_seed(0)
    model = build_model(name, preset="tiny", in_channels=3).eval()
    assert input_multiple(model) == multiple
    shape = (2 * multiple, 3 * multiple, 5 * multiple)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *shape))
    assert out.shape == (1, 1, *shape) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=f"divisible by {multiple}"):
        model(torch.randn(1, 3, 2 * multiple, 3 * multiple, 5 * multiple + 2))
