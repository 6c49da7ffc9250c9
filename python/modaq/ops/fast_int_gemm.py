"""Triton backends of modaq::w4a8_gemm, modaq::w4a4_gemm and modaq::w8a8_gemm, and the CUDA
GEMV that takes them at M <= 16 (decode).

One kernel family (modaq.triton_kernels.int_gemm): int8 tensor-core MMA (wgmma on sm_90 for
M > 16, mma.sync for the weight-streaming M <= 16 tiles), int32 accumulation, the scale
epilogue in fp32 and one cast to out_dtype.  At M <= 16 all three run csrc/int_gemv.cu when
modaq._C is built (K % 16 == 0, 16-byte aligned operands): it streams the weights at DRAM
speed, which the GEMM tiles do not (H200: 2.7-3.0x FP16 at M = 1 on the large 7B shapes, against
0.7-1.0x).  Inputs arrive validated and contiguous.
"""
from __future__ import annotations

import functools

import torch

from . import _cuda
from ._registry import register_fast


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Triton imports and the current CUDA device is sm_80 or newer (int8 MMA)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        return False
    try:
        from ..triton_kernels import int_gemm  # noqa: F401
    except Exception:  # noqa: BLE001  (no Triton, or a Triton that cannot build for this GPU)
        return False
    return True


GEMV_MAX_M = 16


def gemv_fits(xq, qweight, k: int) -> bool:
    """The CUDA GEMV takes this problem: M <= 16, K % 16 == 0, operands 16-byte aligned."""
    return (xq.shape[0] <= GEMV_MAX_M and k > 0 and k % 16 == 0 and _cuda.available()
            and xq.data_ptr() % 16 == 0 and qweight.data_ptr() % 16 == 0)


def int_gemv(a_bits, w_bits, xq, x_scale, qweight, w_scale, bias, out_dtype, warps: int = 0):
    """W4A8 / W4A4 / W8A8 at M <= 16 through csrc/int_gemv.cu; warps: per CTA, 0 = auto."""
    m, n = xq.shape[0], w_scale.shape[0]
    k = xq.shape[1] * (2 if a_bits == 4 else 1)
    y = torch.empty(m, n, dtype=out_dtype, device=xq.device)
    dev, stream = _cuda.launch_args(xq)
    bias_code = _cuda.DTYPE_CODE[bias.dtype] if bias is not None else 0
    _cuda._C.int_gemv(_cuda.ptr(xq), _cuda.ptr(x_scale), _cuda.ptr(qweight), _cuda.ptr(w_scale), _cuda.ptr(bias),
                      bias_code, _cuda.ptr(y), m, n, k, a_bits, w_bits, _cuda.DTYPE_CODE[out_dtype], warps,
                      dev, stream)
    return y


def _launch(a_bits, w_bits, xq, x_scale, qweight, w_scale, bias, out_dtype):
    k = xq.shape[1] * (2 if a_bits == 4 else 1)
    if xq.shape[0] > 0 and w_scale.shape[0] > 0 and gemv_fits(xq, qweight, k):
        return int_gemv(a_bits, w_bits, xq, x_scale, qweight, w_scale, bias, out_dtype)
    from ..triton_kernels.int_gemm import int_gemm
    return int_gemm(xq, x_scale, qweight, w_scale, bias, out_dtype, a_bits, w_bits)


@register_fast("w4a8_gemm", "triton", available)
def w4a8_gemm_triton(xq, x_scale, qweight, w_scale, bias, out_dtype):
    return _launch(8, 4, xq, x_scale, qweight, w_scale, bias, out_dtype)


@register_fast("w4a4_gemm", "triton", available)
def w4a4_gemm_triton(xq, x_scale, qweight, w_scale, bias, out_dtype):
    return _launch(4, 4, xq, x_scale, qweight, w_scale, bias, out_dtype)


@register_fast("w8a8_gemm", "triton", available)
def w8a8_gemm_triton(xq, x_scale, qweight, w_scale, bias, out_dtype):
    return _launch(8, 8, xq, x_scale, qweight, w_scale, bias, out_dtype)
