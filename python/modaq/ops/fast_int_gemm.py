"""Triton backends of modaq::w4a8_gemm, modaq::w4a4_gemm and modaq::w8a8_gemm.

One kernel family (modaq.triton_kernels.int_gemm): int8 tensor-core MMA (wgmma on sm_90 for
M > 16, mma.sync for the weight-streaming M <= 16 tiles), int32 accumulation, the scale
epilogue in fp32 and one cast to out_dtype.  Inputs arrive validated and contiguous.
"""
from __future__ import annotations

import functools

import torch

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


def _launch(a_bits, w_bits, xq, x_scale, qweight, w_scale, bias, out_dtype):
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
