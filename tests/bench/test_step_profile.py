"""``mddose bench model --sections profile``: op categories and one profiled tiny case."""

from __future__ import annotations

import pytest

from mddose.bench import step_profile as sp


@pytest.mark.parametrize("name,category", [
    ("mddose::scan_fwd", "scan fwd"), ("mddose::scan_bwd", "scan bwd"), ("aten::addmm", "projections"),
    ("aten::mm", "projections"), ("aten::mkldnn_convolution", "convolutions"),
    ("aten::convolution_backward", "convolutions"), ("aten::native_layer_norm", "norms"),
    ("aten::copy_", "layout copies"), ("aten::cat", "layout copies"), ("aten::flip", "layout copies"),
    ("aten::silu", "element-wise"), ("aten::add_", "element-wise"), ("aten::_foreach_add_", "optimizer"),
    ("aten::empty", "rest"),
])
def test_categorise(name, category):
    assert sp.categorise(name) == category


@pytest.mark.parametrize("mode", ["call", "train"])
def test_profile_tiny_md_dose(mode):
    res = sp.profile_fn(sp._case_fn("md-dose", "tiny", 32, 2, mode))
    assert abs(sum(res["shares"].values()) - 1) < 0.01
    assert res["shares"]["scan fwd"] > 0
    assert (res["shares"]["scan bwd"] > 0) == (mode == "train")


def test_scan_ranges_restore_the_functions():
    from mddose.ops import scan_cpu

    before = scan_cpu._SelectiveScanCPU.__dict__["forward"]
    with sp.scan_ranges():
        assert scan_cpu._SelectiveScanCPU.__dict__["forward"] is not before
    assert scan_cpu._SelectiveScanCPU.__dict__["forward"] is before
