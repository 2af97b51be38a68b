"""Fast CPU selective scan: a fused C kernel (csrc/selective_scan.c) built lazily and called via ctypes.

The kernel is compiled on first use with the system C compiler (``$CC`` or ``gcc``) using
``-O3 -march=native -ffast-math -fPIC -pthread -fopenmp`` (plus ``-mprefer-vector-width=512`` on x86 CPUs with
AVX-512; the source is ``csrc/selective_scan.c`` with the backward in ``csrc/selective_scan_bwd.inc``) (compiled, then linked *without*
``-ffast-math`` so that ``crtfastmath.o`` does not switch the whole process to flush-to-zero), and
cached in ``$MDDOSE_CACHE_DIR/kernels`` (default ``~/.cache/mddose/kernels``) under a name keyed by
a hash of the source, the flags, the compiler command and the CPU (model and feature flags).
Compilation writes a temporary file and renames it, so concurrent processes are safe.

Threads: built with ``-fopenmp`` the kernel runs its rows on the process's OpenMP pool, which on Linux is
PyTorch's own (its ``libgomp.so.1`` is already loaded, and the kernel's dependency resolves to it). PyTorch's
pool threads spin for a while after each op; threads of the kernel's own would wait for the cores they hold
(measured: up to 8x slower calls at batch 1, BENCHMARKS.md). Where PyTorch uses another OpenMP runtime (Intel's
``libiomp5`` in some conda builds) the kernel gets a libgomp pool of its own. A compiler without OpenMP gets
``-fopenmp-simd`` and POSIX threads started per call — the twin the tests compare with.  If the compiler is missing or fails, a warning is
logged once and :func:`load_kernel` returns ``None`` (the dispatcher then uses the reference).

Memory: the forward stores only (B, D, ceil(L / chunk), N) state checkpoints (plus the (B, D, L)
pre-gate output when ``z`` is given); the backward recomputes states chunk by chunk.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

from mddose.utils.log import log_once

SOURCE = Path(__file__).with_name("csrc") / "selective_scan.c"
#: files SOURCE includes (part of the cache key)
INCLUDES = (SOURCE.with_name("selective_scan_bwd.inc"),)
CFLAGS = ("-O3", "-march=native", "-ffast-math", "-fPIC", "-pthread")
#: threading flags, tried in this order: OpenMP (the process's pool), then POSIX threads (``-fopenmp-simd`` keeps
#: the kernel's ``omp simd`` loops vectorised without the runtime)
THREADING = {"openmp": ("-fopenmp",), "pthreads": ("-fopenmp-simd",)}
#: added on x86 CPUs with AVX-512 (the compilers' default tuning keeps to 256-bit vectors; the kernel's
#: channel blocks are one 512-bit vector, measured ~1.4x faster with it)
AVX512_CFLAGS = ("-mprefer-vector-width=512",)
LDFLAGS = ("-shared", "-pthread", "-lm")
#: steps between stored state checkpoints (memory (B, D, L/CHUNK, N); per-thread buffer (CHUNK+1, N))
CHUNK = 128

_kernels: dict[str, ctypes.CDLL | None] = {}
_lock = threading.Lock()


def cache_dir() -> Path:
    """Directory of compiled kernels: ``$MDDOSE_CACHE_DIR/kernels`` or ``~/.cache/mddose/kernels``
    (a per-user temporary directory is used if that one cannot be written)."""
    from mddose.utils.config import cache_root

    return cache_root() / "kernels"


def compiler() -> str:
    return os.environ.get("CC") or "gcc"


def _machine_id() -> str:
    """CPU identity for the cache key (``-march=native`` binaries are not portable)."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "model name", "Features")):
                    flags += line
                if line.strip() == "":
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def cflags() -> tuple[str, ...]:
    """:data:`CFLAGS`, plus :data:`AVX512_CFLAGS` on an x86-64 CPU that reports ``avx512f``."""
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return CFLAGS + AVX512_CFLAGS if x86 and " avx512f" in _machine_id() else CFLAGS


def compile_kernel(cc: str, source: Path, output: Path, defines: tuple[str, ...],
                   threading: str | None = None) -> str:
    """Compile ``source`` into the shared library ``output`` (raises on failure); returns the threading used.

    ``threading``: a key of :data:`THREADING`, or None for the first that compiles."""
    errors = []
    for name in ([threading] if threading else list(THREADING)):
        obj = output.with_suffix(".o")
        try:
            for cmd in ([cc, *cflags(), *THREADING[name], *defines, "-c", str(source), "-o", str(obj)],
                        [cc, str(obj), *LDFLAGS, *THREADING[name], "-o", str(output)]):
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                if res.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()[-2000:]}")
            return name
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            errors.append(exc)
        finally:
            obj.unlink(missing_ok=True)
    raise errors[-1]


def _declare(lib: ctypes.CDLL, sfx: str) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    fwd = getattr(lib, f"scan_fwd_{sfx}")
    fwd.argtypes = [p] * 8 + [i32] + [i64] * 7 + [p] * 4 + [p] * 3 + [i32]
    fwd.restype = i32
    bwd = getattr(lib, f"scan_bwd_{sfx}")
    bwd.argtypes = [p] * 8 + [i32] + [i64] * 7 + [p] * 4 + [p] * 4 + [p] * 8 + [i32]
    bwd.restype = i32
    getattr(lib, f"scan_max_state_{sfx}").restype = i32
    getattr(lib, f"scan_max_directions_{sfx}").restype = i32
    getattr(lib, f"scan_uses_openmp_{sfx}").restype = i32
    count = getattr(lib, f"scan_count_nonfinite_{sfx}")
    count.argtypes, count.restype = [p, i64], i64
    tr = getattr(lib, f"scan_transpose_{sfx}")
    tr.argtypes, tr.restype = [p, p, i64, i64, i64], None


def _build(dtype: torch.dtype) -> ctypes.CDLL:
    sfx = "f64" if dtype == torch.float64 else "f32"
    defines = ("-DSCAN_DOUBLE",) if sfx == "f64" else ()
    cc = compiler()
    src = b"".join(p.read_bytes() for p in (SOURCE, *INCLUDES))
    flags = cflags() + LDFLAGS + defines + tuple(f for v in THREADING.values() for f in v)
    key = hashlib.sha256(b"\0".join([src, " ".join(flags).encode(),
                                     cc.encode(), _machine_id().encode()]))
    out_dir = cache_dir()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise PermissionError(f"{out_dir} is not writable")
    except OSError:  # e.g. read-only home: use a per-user temporary directory instead
        out_dir = Path(tempfile.gettempdir()) / f"mddose-{os.getuid() if hasattr(os, 'getuid') else 'user'}" / "kernels"
        out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"selective_scan_{sfx}_{key.hexdigest()[:16]}.so"
    if not final.exists():
        fd, tmp = tempfile.mkstemp(prefix=final.stem + ".", suffix=".tmp.so", dir=out_dir)
        os.close(fd)
        try:
            compile_kernel(cc, SOURCE, Path(tmp), defines)
            os.replace(tmp, final)
        finally:
            Path(tmp).unlink(missing_ok=True)
        log_once(f"scan-build-{sfx}", f"mddose: compiled selective-scan kernel {final}")
    lib = ctypes.CDLL(str(final))
    _declare(lib, sfx)
    threads = "the OpenMP pool" if getattr(lib, f"scan_uses_openmp_{sfx}")() else "POSIX threads"
    log_once(f"scan-threads-{sfx}", f"mddose: selective-scan kernel ({sfx}) runs on {threads}")
    return lib


def load_kernel(dtype: torch.dtype = torch.float32) -> ctypes.CDLL | None:
    """The compiled kernel library for ``dtype`` (float32 / float64), or ``None`` if it cannot be built."""
    sfx = "f64" if dtype == torch.float64 else "f32"
    with _lock:
        if sfx in _kernels:
            return _kernels[sfx]
        try:
            _kernels[sfx] = _build(dtype)
        except Exception as exc:  # noqa: BLE001 - any build/load problem means "use the reference"
            _kernels[sfx] = None
            log_once(f"scan-build-failed-{sfx}",
                     f"mddose: could not build the CPU selective-scan kernel ({type(exc).__name__}: {exc}); "
                     "falling back to the reference implementation", logging.WARNING)
        return _kernels[sfx]


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _layout_args(directions: int, reverse, Bt: Tensor, Ct: Tensor, z: Tensor | None) -> tuple:
    """The kernel's (K, rev, B strides, C strides, z strides) arguments: ``Bt``/``Ct`` are (B, G, L, N) with
    N contiguous, ``z`` (B, Dk, L) any strides; ``reverse`` one flag per direction (or None)."""
    i64x3 = ctypes.c_int64 * 3
    rev = None if reverse is None else (ctypes.c_byte * len(reverse))(*(1 if r else 0 for r in reverse))
    zs = None if z is None else i64x3(*z.stride())
    return (directions, rev, i64x3(*Bt.stride()[:3]), i64x3(*Ct.stride()[:3]), zs)


def _sfx(dtype: torch.dtype) -> str:
    return "f64" if dtype == torch.float64 else "f32"


def _transpose_last(t: Tensor) -> Tensor:
    """Contiguous copy of ``t`` (..., R, C) as (..., C, R), by the kernel library (float32/64, CPU)."""
    t = t.contiguous()
    out = torch.empty(*t.shape[:-2], t.shape[-1], t.shape[-2], dtype=t.dtype)
    lib = load_kernel(t.dtype)
    getattr(lib, f"scan_transpose_{_sfx(t.dtype)}")(t.data_ptr(), out.data_ptr(), t[..., 0, 0].numel(),
                                                      t.shape[-2], t.shape[-1])
    return out


def _layout_bc(t: Tensor) -> Tensor:
    """(B, N, L) or (B, G, N, L) → contiguous (B, G, L, N); no copy when ``t`` is already a transposed
    view of a contiguous (B, [G,] L, N) tensor (as Mamba blocks produce it from a linear projection)."""
    t4 = t.unsqueeze(1) if t.dim() == 3 else t
    view = t4.transpose(-1, -2)
    return view if view.is_contiguous() else _transpose_last(t4)


def _dense(t: Tensor) -> Tensor | None:
    """``t`` or its last-two-axes transpose if one of them is contiguous (same memory), else None."""
    if t.is_contiguous():
        return t
    if t.dim() >= 2 and t.transpose(-1, -2).is_contiguous():
        return t.transpose(-1, -2)
    return None


def check_finite_cpu(named: list[tuple[str, Tensor]]) -> None:
    """Raise ``ValueError`` naming the first input with NaN/inf (counted by the kernel library)."""
    for name, t in named:
        dense = _dense(t) if t.dtype in (torch.float32, torch.float64) and t.device.type == "cpu" else None
        lib = load_kernel(t.dtype) if dense is not None else None
        if lib is not None:
            bad = getattr(lib, f"scan_count_nonfinite_{_sfx(t.dtype)}")(dense.data_ptr(), dense.numel())
        else:
            bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"selective_scan: {name} contains NaN or infinite values")


class _SelectiveScanCPU(torch.autograd.Function):
    """Autograd wrapper: forward and backward are single kernel calls."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk):
        dtype = u.dtype
        lib = load_kernel(dtype)
        sfx = "f64" if dtype == torch.float64 else "f32"
        c = lambda t: None if t is None else t.detach().to(dtype).contiguous()  # noqa: E731
        u_, delta_, A_, D_, z_, db_ = c(u), c(delta), c(A), c(D), c(z), c(delta_bias)
        Bt, Ct = _layout_bc(B.detach().to(dtype)), _layout_bc(C.detach().to(dtype))
        nb, dim, seqlen = u_.shape
        dstate, groups = A_.shape[1], Bt.shape[1]
        nch = (seqlen + chunk - 1) // chunk
        out = torch.empty_like(u_)
        xpre = torch.empty_like(u_) if z is not None and any(ctx.needs_input_grad) else None  # for dz
        ckpt = torch.empty(nb, dim, nch, dstate, dtype=dtype)
        if Ct.shape[1] != groups:  # B and C may have different group counts: broadcast to a common one
            groups = math.lcm(groups, Ct.shape[1])
            Bt, Ct = (t.repeat_interleave(groups // t.shape[1], dim=1) for t in (Bt, Ct))
        err = getattr(lib, f"scan_fwd_{sfx}")(
            _ptr(u_), _ptr(delta_), _ptr(A_), _ptr(Bt), _ptr(Ct), _ptr(D_), _ptr(z_), _ptr(db_),
            int(delta_softplus), nb, dim, seqlen, dstate, groups, chunk, *_layout_args(1, None, Bt, Ct, z_),
            _ptr(out), _ptr(xpre), _ptr(ckpt), torch.get_num_threads())
        if err:
            raise RuntimeError(f"selective_scan CPU kernel failed (code {err})")
        ctx.save_for_backward(u_, delta_, A_, Bt, Ct, D_, z_, db_, xpre, ckpt)
        ctx.meta = (delta_softplus, chunk, _bc_layout(B), _bc_layout(C), D is not None, delta_bias is not None)
        return out, ckpt[:, :, -1].clone()

    @staticmethod
    def backward(ctx, dout, dlast):
        u_, delta_, A_, Bt, Ct, D_, z_, db_, xpre, ckpt = ctx.saved_tensors
        softplus, chunk, B, C, has_d, has_db = ctx.meta
        dtype = u_.dtype
        sfx = "f64" if dtype == torch.float64 else "f32"
        lib = load_kernel(dtype)
        nb, dim, seqlen = u_.shape
        dstate, groups = A_.shape[1], Bt.shape[1]
        dout = torch.zeros_like(u_) if dout is None else dout.to(dtype).contiguous()
        dlast = None if dlast is None else dlast.to(dtype).contiguous()
        du, ddelta = torch.empty_like(u_), torch.empty_like(u_)
        dz = torch.empty_like(u_) if z_ is not None else None
        dA = torch.empty(nb, dim, dstate, dtype=dtype)
        dBt, dCt = torch.empty_like(Bt), torch.empty_like(Ct)  # zeroed by the kernel
        dD, ddb = torch.empty(nb, dim, dtype=dtype), torch.empty(nb, dim, dtype=dtype)
        err = getattr(lib, f"scan_bwd_{sfx}")(
            _ptr(u_), _ptr(delta_), _ptr(A_), _ptr(Bt), _ptr(Ct), _ptr(D_), _ptr(z_), _ptr(db_),
            int(softplus), nb, dim, seqlen, dstate, groups, chunk, *_layout_args(1, None, Bt, Ct, z_),
            _ptr(xpre), _ptr(ckpt), _ptr(dout), _ptr(dlast),
            _ptr(du), _ptr(ddelta), _ptr(dA), _ptr(dBt), _ptr(dCt), _ptr(dD), _ptr(dz), _ptr(ddb),
            torch.get_num_threads())
        if err:
            raise RuntimeError(f"selective_scan CPU kernel backward failed (code {err})")
        dB, dC = _fold_groups(dBt, B), _fold_groups(dCt, C)
        return (du, ddelta, dA.sum(0), dB, dC, dD.sum(0) if has_d else None, dz,
                ddb.sum(0) if has_db else None, None, None)


def _bc_layout(t: Tensor) -> tuple[int, int, torch.dtype]:
    """(ndim, groups, dtype) of a B or C input: enough to put its gradient back in shape."""
    return t.dim(), (1 if t.dim() == 3 else t.shape[1]), t.dtype


def _fold_groups(grad: Tensor, layout: tuple[int, int, torch.dtype]) -> Tensor:
    """(B, G, L, N) gradient → the input's layout, summing broadcast groups back if G was expanded."""
    ndim, groups, dtype = layout
    if grad.shape[1] != groups:
        grad = grad.view(grad.shape[0], groups, grad.shape[1] // groups, *grad.shape[2:]).sum(2)
    grad = _transpose_last(grad)
    return (grad.squeeze(1) if ndim == 3 else grad).to(dtype)


def kernel_supports(u: Tensor, A: Tensor) -> bool:
    """Whether the CPU kernel can run these inputs (CPU, real floating dtype, state size ≤ 256)."""
    return u.device.type == "cpu" and u.dtype.is_floating_point and not u.dtype.is_complex \
        and A.shape[1] <= 256 and u.shape[2] >= 1


def selective_scan_cpu(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None,
                       delta_softplus: bool = False, return_last_state: bool = False,
                       chunk: int = CHUNK):
    """Selective scan on the CPU kernel (inputs already checked). Same contract as the reference.

    float32 and float64 run natively (separate kernel builds); other dtypes (bf16/half) are computed
    in float32 and cast back. Raises ``RuntimeError`` if the kernel is unavailable.
    """
    dtype = u.dtype
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    if load_kernel(cdt) is None:
        raise RuntimeError("selective_scan: the CPU kernel is not available")
    cast = (lambda t: t if t is None or t.dtype == cdt else t.to(cdt))  # noqa: E731
    out, last = _SelectiveScanCPU.apply(cast(u), cast(delta), cast(A), cast(B), cast(C), cast(D), cast(z),
                                        cast(delta_bias), bool(delta_softplus), int(chunk))
    out, last = out.to(dtype), last.to(dtype)
    return (out, last) if return_last_state else out


class _MultiScanCPU(torch.autograd.Function):
    """Autograd wrapper of the kernel's multi-direction form (see :func:`selective_scan_multi_cpu`)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, chunk):
        dtype = u.dtype
        lib = load_kernel(dtype)
        sfx = _sfx(dtype)
        c = lambda t: None if t is None else t.detach().contiguous()  # noqa: E731
        lastdense = lambda t: t.detach() if t.stride(-1) == 1 else t.detach().contiguous()  # noqa: E731
        u_, delta_, A_, D_, db_ = c(u), c(delta), c(A), c(D), c(delta_bias)
        Bt, Ct = lastdense(B), lastdense(C)
        z_ = None if z is None else z.detach()
        nb, dim, seqlen = u_.shape
        dstate, groups, K = A_.shape[1], Bt.shape[1], len(reverse)
        nch = (seqlen + chunk - 1) // chunk
        out = torch.empty(nb, dim // K, seqlen, dtype=dtype)
        xpre = torch.empty_like(out) if z is not None and any(ctx.needs_input_grad) else None
        ckpt = torch.empty(nb, dim, nch, dstate, dtype=dtype)
        err = getattr(lib, f"scan_fwd_{sfx}")(
            _ptr(u_), _ptr(delta_), _ptr(A_), _ptr(Bt), _ptr(Ct), _ptr(D_), _ptr(z_), _ptr(db_),
            int(delta_softplus), nb, dim, seqlen, dstate, groups, chunk, *_layout_args(K, reverse, Bt, Ct, z_),
            _ptr(out), _ptr(xpre), _ptr(ckpt), torch.get_num_threads())
        if err:
            raise RuntimeError(f"selective_scan CPU kernel failed (code {err})")
        ctx.save_for_backward(u_, delta_, A_, Bt, Ct, D_, z_, db_, xpre, ckpt)
        ctx.meta = (delta_softplus, reverse, chunk, D is not None, delta_bias is not None)
        return out

    @staticmethod
    def backward(ctx, dout):
        u_, delta_, A_, Bt, Ct, D_, z_, db_, xpre, ckpt = ctx.saved_tensors
        softplus, reverse, chunk, has_d, has_db = ctx.meta
        dtype = u_.dtype
        lib = load_kernel(dtype)
        nb, dim, seqlen = u_.shape
        dstate, groups, K = A_.shape[1], Bt.shape[1], len(reverse)
        dout = dout.to(dtype).contiguous()
        du, ddelta = torch.empty_like(u_), torch.empty_like(u_)
        dz = torch.empty(nb, dim // K, seqlen, dtype=dtype) if z_ is not None else None
        dA = torch.empty(nb, dim, dstate, dtype=dtype)
        dB = torch.empty(nb, groups, seqlen, dstate, dtype=dtype)   # zeroed by the kernel
        dC = torch.empty(nb, Ct.shape[1], seqlen, dstate, dtype=dtype)
        dD, ddb = torch.empty(nb, dim, dtype=dtype), torch.empty(nb, dim, dtype=dtype)
        err = getattr(lib, f"scan_bwd_{_sfx(dtype)}")(
            _ptr(u_), _ptr(delta_), _ptr(A_), _ptr(Bt), _ptr(Ct), _ptr(D_), _ptr(z_), _ptr(db_),
            int(softplus), nb, dim, seqlen, dstate, groups, chunk, *_layout_args(K, reverse, Bt, Ct, z_),
            _ptr(xpre), _ptr(ckpt), _ptr(dout), None,
            _ptr(du), _ptr(ddelta), _ptr(dA), _ptr(dB), _ptr(dC), _ptr(dD), _ptr(dz), _ptr(ddb),
            torch.get_num_threads())
        if err:
            raise RuntimeError(f"selective_scan CPU kernel backward failed (code {err})")
        return (du, ddelta, dA.sum(0), dB, dC, dD.sum(0) if has_d else None, dz,
                ddb.sum(0) if has_db else None, None, None, None)


def selective_scan_multi_cpu(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                             z: Tensor | None = None, delta_bias: Tensor | None = None,
                             delta_softplus: bool = False, reverse: tuple[bool, ...] = (False, True),
                             chunk: int = CHUNK) -> Tensor:
    """Multi-direction scan on the CPU kernel (inputs already checked); same contract as
    :func:`mddose.ops.scan_multi.selective_scan_multi_ref`. B, C: (B, G, L, N) with B and C having the same G
    (views with a contiguous N axis are read in place, as is any view ``z``). Other dtypes run in float32."""
    dtype = u.dtype
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    if load_kernel(cdt) is None:
        raise RuntimeError("selective_scan: the CPU kernel is not available")
    cast = (lambda t: t if t is None or t.dtype == cdt else t.to(cdt))  # noqa: E731
    out = _MultiScanCPU.apply(cast(u), cast(delta), cast(A), cast(B), cast(C), cast(D), cast(z), cast(delta_bias),
                              bool(delta_softplus), tuple(bool(r) for r in reverse), int(chunk))
    return out.to(dtype)
