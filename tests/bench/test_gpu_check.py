"""``mddose bench gpu``: safe without CUDA; its pieces run where they can."""

from __future__ import annotations

import pytest
import torch

from mddose.cli.main import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_bench_gpu_without_cuda_runs_nothing(capsys):
    assert main(["bench", "gpu"]) == 0
    assert "no CUDA device" in capsys.readouterr().out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_gpu_train_step_on_cuda():
    from mddose.bench.gpu import train_amp

    rows = train_amp(steps=2, size=64, batch=2, preset="tiny")
    assert rows and all(r["finite"] for r in rows)
