"""Triton backends of modaq::w4a8_gemm, modaq::w4a4_gemm and modaq::w8a8_gemm, the CUDA
GEMV that takes them at M <= 16 (decode), and the backends of modaq::int_linear: the GEMV with
quantize_act fused in (csrc/int_gemv.cu, int_gemv_fused) at decode sizes without an online
transform, else modaq::quantize_act followed by the GEMM op.

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
            and _cuda.aligned16(xq, qweight))


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


# ------------------------------------------------------------------ modaq::int_linear

FUSED_MAX_X_BYTES = 32768  # M * K: the fused GEMV keeps quantized x in shared memory
# Every CTA (16 output rows) quantizes all of x, so an SM repeats that work once per CTA it
# holds.  H200 (benchmarks/results/int_gemm_NVIDIA_H200_fused_probe.md, W4A8): the fused kernel beat
# quantize_act + GEMV where ceil(CTAs / SMs) * M * K <= 16384 (3584 x 3584 M = 1: 7.4 vs 8.8
# us, M = 2: 8.4 vs 8.9) and lost beyond it (3584 x 18944 M = 1, 9 CTAs per SM x 3584: 25.1
# vs 16.6 us; 3584 x 4608 M = 2, 21504: 10.1 vs 9.7 us).
FUSED_MAX_VALUES_PER_SM = 16384


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def fused_fits(x, smooth, qweight, n: int, hadamard_signs=None, kron_left=None) -> bool:
    """int_linear takes the fused kernel: no online transform, fp16 / bf16 x [M, K] with
    M <= 16, K % 16 == 0, M * K <= 32 KB, 16-byte aligned x / smooth / weights, and little
    repeated quantization per SM (FUSED_MAX_VALUES_PER_SM) for N output features."""
    m, k = x.shape
    if not (hadamard_signs is None and kron_left is None and x.dtype in (torch.float16, torch.bfloat16)
            and 0 < m <= GEMV_MAX_M and k % 16 == 0 and m * k <= FUSED_MAX_X_BYTES and _cuda.available()
            and _cuda.aligned16(x, smooth, qweight)):
        return False
    ctas_per_sm = -(-(-(-n // 16)) // _sm_count(x.device))
    return ctas_per_sm * m * k <= FUSED_MAX_VALUES_PER_SM


def int_gemv_fused(x, qweight, w_scale, bias, a_bits, w_bits, smooth, clip_ratio, warps: int = 0):
    """quantize_act + GEMV in one kernel (csrc/int_gemv.cu); y [M, N] in x's dtype."""
    m, k = x.shape
    y = torch.empty(m, w_scale.shape[0], dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    dev, stream = _cuda.launch_args(x)
    bias_code = _cuda.DTYPE_CODE[bias.dtype] if bias is not None else 0
    _cuda._C.int_gemv_fused(_cuda.ptr(x), _cuda.ptr(smooth), _cuda.ptr(qweight), _cuda.ptr(w_scale), _cuda.ptr(bias),
                            bias_code, _cuda.ptr(y), m, y.shape[1], k, a_bits, w_bits, _cuda.DTYPE_CODE[x.dtype],
                            warps, dev, stream, float(clip_ratio))  # clip: fp32 in the kernel
    return y


def int_linear_composed(x, qweight, w_scale, bias, a_bits, w_bits, smooth, hadamard_signs, kron_left, kron_right,
                        clip_ratio=1.0):
    """modaq::quantize_act then the GEMM op, each on its fastest backend."""
    from .int_gemm import GEMM_OF_BITS
    xq, xs = torch.ops.modaq.quantize_act(x, a_bits, smooth, hadamard_signs, kron_left, kron_right, clip_ratio)
    return getattr(torch.ops.modaq, GEMM_OF_BITS[(a_bits, w_bits)])(xq, xs, qweight, w_scale, bias, x.dtype)


@register_fast("int_linear", "cuda", _cuda.available)
def int_linear_cuda(x, qweight, w_scale, bias, a_bits, w_bits, smooth, hadamard_signs, kron_left, kron_right,
                    clip_ratio=1.0):
    if fused_fits(x, smooth, qweight, w_scale.shape[0], hadamard_signs, kron_left):
        return int_gemv_fused(x, qweight, w_scale, bias, a_bits, w_bits, smooth, clip_ratio)
    return int_linear_composed(x, qweight, w_scale, bias, a_bits, w_bits, smooth, hadamard_signs, kron_left,
                               kron_right, clip_ratio)


# without modaq._C: the two ops on their Triton / reference backends
register_fast("int_linear", "composed", lambda: True)(int_linear_composed)
