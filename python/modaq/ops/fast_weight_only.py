"""Fast backends of modaq::w3a16_gemm and modaq::w4a16_gemm.

By M (rows of x); crossovers measured on an H100 (benchmarks/results/weight_only_*.md):
  M <= GEMV_MAX_M (16) : CUDA fused dequant GEMV (csrc/weight_only_gemv.cu), one launch (the C++
                         side picks the shared-memory or the register pipelined kernel by M, N);
  M >  GEMV_MAX_M      : CUDA dequantize to x.dtype, then cuBLAS (F.linear).  At M = 64 this
                         beat the GEMV in 16-row launches on 4 of 7 shapes (2x on the small
                         ones, within 7% on the others); at M = 1024 it costs 1.22-1.38x FP16.
run_gemv also takes M > 16 (16-row launches) and run_dequant_cublas can dequantize in row
chunks into one reused buffer (chunk_bytes); both were measured and lost, so the op uses
neither.  The Triton fused dequant-GEMM (triton_kernels/weight_only_gemm.py) measured 20-70x
slower than dequantize + cuBLAS at M >= 64, so it only serves builds without modaq._C.
Other dtypes (fp32) run the reference.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import _cuda
from ._registry import register_fast

CUDA_MAX_M = 16  # rows per GEMV launch (two 8-token mma tiles)
GEMV_MAX_M = 16
DEQUANT_CHUNK_BYTES = 0  # dequantize all rows at once: 12 / 24 / 48 MB chunks measured slower
_FAST_DTYPES = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from ..triton_kernels import weight_only_gemm  # noqa: F401
    except ImportError:
        return False
    return True


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """The kernels read x with 16-byte loads: copy a view whose start is not 16-byte aligned."""
    return x if x.data_ptr() % 16 == 0 else x.clone()


def run_gemv(bits: int, x: torch.Tensor, qweight, scales, zeros, n: int, group_size: int, bias=None,
             splits: int = 0, kernel: int = 0) -> torch.Tensor:
    """CUDA fused GEMV, x [M, K] in launches of 16 rows; `splits` forces the cluster K split
    (0 = heuristic); `kernel` forces 1 = shared-memory pipelined, 2 = register pipelined,
    3 = shared-memory pipelined with its shallow ring (0 = by M and N, see
    csrc/weight_only_gemv_launch.cuh)."""
    m, k = x.shape
    x = _aligned(x)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    dev, stream = _cuda.launch_args(x)
    bias_code = _cuda.DTYPE_CODE[bias.dtype] if bias is not None else 0
    for m0 in range(0, m, CUDA_MAX_M):  # row slices of contiguous x / y stay 16-byte aligned
        rows = min(CUDA_MAX_M, m - m0)
        _cuda._C.weight_only_gemv(_cuda.ptr(x[m0:]), _cuda.ptr(qweight), _cuda.ptr(scales), _cuda.ptr(zeros),
                                  _cuda.ptr(bias), bias_code, _cuda.ptr(y[m0:]), rows, n, k, bits, group_size,
                                  _cuda.DTYPE_CODE[x.dtype], splits, dev, stream, kernel)
    return y


def dequantize(bits: int, qweight, scales, zeros, n: int, k: int, group_size: int, dtype: torch.dtype,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Packed W3 / W4 -> [n, k] in dtype (fp16 / bf16), exactly the reference's fp32 weight rounded.

    `out`: optional contiguous [n, k] buffer of that dtype.
    """
    w = torch.empty(n, k, dtype=dtype, device=qweight.device) if out is None else out
    dev, stream = _cuda.launch_args(qweight)
    _cuda._C.weight_only_dequant(_cuda.ptr(qweight), _cuda.ptr(scales), _cuda.ptr(zeros), _cuda.ptr(w),
                                 n, k, bits, group_size, _cuda.DTYPE_CODE[dtype], dev, stream)
    return w


def run_dequant_cublas(bits: int, x: torch.Tensor, qweight, scales, zeros, n: int, group_size: int,
                       bias=None, chunk_bytes: int = DEQUANT_CHUNK_BYTES) -> torch.Tensor:
    """Dequantize rows of W in chunks of ~chunk_bytes (<= 0: all at once), cuBLAS after each.

    Row chunks are multiples of 16, so each is a contiguous slice of the packed tensors
    (weight_only_layout: 16-row tiles); cuBLAS writes the chunk's columns of y in place
    (a [M, rows] view with leading dimension N).
    """
    m, k = x.shape
    b = None if bias is None else bias.to(x.dtype)
    rows = n if chunk_bytes <= 0 else max(16, chunk_bytes // (2 * k) // 16 * 16)
    if rows >= n:
        return F.linear(x, dequantize(bits, qweight, scales, zeros, n, k, group_size, x.dtype), b)
    chunks = -(-n // rows)
    rows = -(-(-(-n // chunks)) // 16) * 16  # equal chunks, multiples of 16
    buf = torch.empty(rows, k, dtype=x.dtype, device=x.device)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    for n0 in range(0, n, rows):
        nc = min(rows, n - n0)
        packed_rows = slice(n0, n0 + -(-nc // 16) * 16)
        w = dequantize(bits, qweight[packed_rows], scales[packed_rows], zeros[packed_rows], nc, k, group_size,
                       x.dtype, out=buf[:nc])
        if b is None:
            torch.mm(x, w.t(), out=y[:, n0:n0 + nc])
        else:
            torch.addmm(b[n0:n0 + nc], x, w.t(), out=y[:, n0:n0 + nc])
    return y


def run_triton(bits: int, x: torch.Tensor, qweight, scales, zeros, n: int, group_size: int, bias=None,
               config: dict | None = None) -> torch.Tensor:
    from ..triton_kernels.weight_only_gemm import weight_only_gemm
    return weight_only_gemm(x, qweight, scales, zeros, bits, n, group_size, bias, config)


def _by_m(bits, x, qweight, scales, zeros, n, group_size, bias):
    m = x.shape[0]
    if x.dtype not in _FAST_DTYPES or m == 0:
        return None
    # the kernels read packed tensors with 8 / 16-byte loads (buffers from pack_w* always are)
    qweight, scales, zeros = (_aligned(t) for t in (qweight, scales, zeros))
    if m <= GEMV_MAX_M:
        return run_gemv(bits, x, qweight, scales, zeros, n, group_size, bias)
    return run_dequant_cublas(bits, x, qweight, scales, zeros, n, group_size, bias)


def _reference(bits):
    from . import reference
    return reference.w3a16_gemm if bits == 3 else reference.w4a16_gemm


def _make(bits: int):
    def cuda_impl(x, qweight, scales, zeros, out_features, group_size, bias):
        y = _by_m(bits, x, qweight, scales, zeros, out_features, group_size, bias)
        return y if y is not None else _reference(bits)(x, qweight, scales, zeros, out_features, group_size, bias)

    def triton_impl(x, qweight, scales, zeros, out_features, group_size, bias):
        if x.dtype not in _FAST_DTYPES or x.shape[0] == 0:
            return _reference(bits)(x, qweight, scales, zeros, out_features, group_size, bias)
        return run_triton(bits, _aligned(x), qweight, scales, zeros, out_features, group_size, bias)

    name = f"w{bits}a16_gemm"
    register_fast(name, f"cuda (fused GEMV M<={GEMV_MAX_M}, dequant+cuBLAS above)", _cuda.available)(cuda_impl)
    register_fast(name, "triton", triton_available)(triton_impl)


_make(3)
_make(4)
