"""The scan forward/backward timing script runs on small inputs and reports one line per chunk length."""

from __future__ import annotations

import pytest

from mddose.bench.scripts import scan_backward
from mddose.ops.scan_cpu import load_kernel

pytestmark = pytest.mark.skipif(load_kernel(__import__("torch").float32) is None, reason="no CPU scan kernel")


def test_prints_a_ratio_per_chunk(capsys):
    assert scan_backward.main(["--batch", "1", "--channels", "16", "--length", "64", "--chunks", "16", "64",
                               "--repeats", "1", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines[1:]] == ["chunk   16", "chunk   64"]
    assert all("backward/forward" in ln for ln in lines[1:])


def test_time_chunk_times_both_passes():
    leaves = scan_backward.scan_inputs(1, 16, 32, 4)
    r = scan_backward.time_chunk(leaves, 8, 1)
    assert r["forward_s"] > 0 and r["backward_s"] > 0


@pytest.mark.parametrize("bad", [["--chunks", "0"], ["--length", "0"]])
def test_refuses_bad_sizes(bad):
    with pytest.raises(SystemExit) as e:
        scan_backward.main(bad)
    assert e.value.code == 2
