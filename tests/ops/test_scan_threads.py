"""How the CPU kernel runs its threads: the OpenMP build (the process's pool, PyTorch's own) against its twin, the
POSIX-threads build — same outputs and gradients on random inputs — and the build's choice between them."""

from __future__ import annotations

import ctypes
import shutil

import pytest
import torch

from mddose.ops import scan_cpu
from mddose.ops.scan_multi import selective_scan_multi
from tests.ops.test_scan import assert_close_scaled, require_kernel
from tests.ops.test_scan_multi import make_leaves, run

needs_gcc = pytest.mark.skipif(shutil.which(scan_cpu.compiler()) is None, reason="no C compiler")


def _build(tmp_path, threading: str | None) -> tuple[ctypes.CDLL, str]:
    out = tmp_path / f"scan_{threading}.so"
    used = scan_cpu.compile_kernel(scan_cpu.compiler(), scan_cpu.SOURCE, out, (), threading)
    lib = ctypes.CDLL(str(out))
    scan_cpu._declare(lib, "f32")
    return lib, used


@needs_gcc
@pytest.mark.parametrize("threading", ["openmp", "pthreads"])
def test_a_build_reports_its_threading(tmp_path, threading):
    lib, used = _build(tmp_path, threading)
    assert used == threading
    assert lib.scan_uses_openmp_f32() == (threading == "openmp")


@needs_gcc
def test_without_openmp_the_build_falls_back_to_posix_threads(tmp_path, monkeypatch):
    monkeypatch.setitem(scan_cpu.THREADING, "openmp", ("-fno-such-openmp-flag",))
    lib, used = _build(tmp_path, None)
    assert used == "pthreads" and lib.scan_uses_openmp_f32() == 0


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict:
    """Both builds, compiled once for the module."""
    tmp = tmp_path_factory.mktemp("scan-builds")
    return {t: _build(tmp, t)[0] for t in ("openmp", "pthreads")}


@needs_gcc
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("reverse", [(False, True), (False,)], ids=["bi", "fwd"])
def test_openmp_and_posix_threads_agree(builds, monkeypatch, threads, reverse):
    """Both builds, every input's gradient, on a problem large enough to be split between threads."""
    require_kernel()
    leaves = make_leaves(b=2, dk=40, seqlen=300, n=16, k=len(reverse), seed=3)
    results = {}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for threading, lib in builds.items():
            monkeypatch.setitem(scan_cpu._kernels, "f32", lib)
            results[threading] = run(leaves, selective_scan_multi, reverse, backend="cpu")
    finally:
        torch.set_num_threads(old)
    assert_close_scaled(results["openmp"], results["pthreads"])
