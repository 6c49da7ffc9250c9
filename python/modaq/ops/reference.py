"""Plain-torch reference of every modaq op: the single truth the fast backends are tested against.

All arithmetic is fp32 (integer GEMMs accumulate exactly in fp64, then apply the same fp32
epilogue a kernel applies).  Inputs are already validated 2-D tensors; weights arrive in the
kernel layouts of modaq.formats and are unpacked here.
"""
from __future__ import annotations

import functools
import math

import torch

from .. import formats
from ..hadamard import hadamard_factors, hadamard_matrix

# ------------------------------------------------------------------ weight-only GEMM


def _woq_gemm(x, w_fp32, bias):
    y = x.float() @ w_fp32.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def w3a16_gemm(x, qweight, scales, zeros, out_features: int, group_size: int, bias=None):
    """x [M, K] @ dequant(W3)^T -> [M, N] in x.dtype."""
    q, s, z = formats.unpack_w3(qweight, scales, zeros, out_features, x.shape[1])
    return _woq_gemm(x, formats.dequantize_weight_asym(q, s, z, group_size), bias)


def w4a16_gemm(x, qweight, scales, zeros, out_features: int, group_size: int, bias=None):
    """x [M, K] @ dequant(W4)^T -> [M, N] in x.dtype."""
    q, s, z = formats.unpack_w4(qweight, scales, zeros, out_features, x.shape[1])
    return _woq_gemm(x, formats.dequantize_weight_asym(q, s, z, group_size), bias)


# --------------------------------------------------------------- online transforms


def _fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized Walsh-Hadamard (Sylvester order) along the last dim, a power of two."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    while h < n:
        x = x.reshape(*lead, n // (2 * h), 2, h)
        x = torch.stack([x[..., 0, :] + x[..., 1, :], x[..., 0, :] - x[..., 1, :]], dim=-2)
        h *= 2
    return x.reshape(*lead, n)


@functools.lru_cache(maxsize=None)
def _core_matrix(m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # cached per device: a host-to-device copy inside a CUDA-graph capture would break it
    return hadamard_matrix(m, dtype=dtype, device=device)


def _math_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 arithmetic, or fp64 when the caller passes fp64 (offline weight folding)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def hadamard_rows(x: torch.Tensor, signs: torch.Tensor | None) -> torch.Tensor:
    """(x * signs) @ H_K / sqrt(K) along rows, with H_K = H_m (x) H_{2^k} (modaq.hadamard order)."""
    k = x.shape[-1]
    m, p = hadamard_factors(k)
    dt = _math_dtype(x)
    xf = x.to(dt)
    if signs is not None:  # .to(device): offline weight folding may hold signs elsewhere
        xf = xf * signs.to(x.device, dt)
    xf = _fwht(xf.reshape(-1, m, p))
    if m > 1:
        hm = _core_matrix(m, dt, x.device)
        xf = torch.matmul(hm.t(), xf)  # row-vector convention: x @ (H_m (x) H_p)
    return xf.reshape(x.shape) * (1.0 / math.sqrt(k))


def kron_rows(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor | None) -> torch.Tensor:
    """Row-wise P1^T X_r P2 with X_r = x viewed [n1, n2]; equals x @ (P1 (x) P2).  right=None
    means P2 = I (n2 = K / n1): only P1 acts."""
    n1 = left.shape[0]
    n2 = x.shape[-1] // n1 if right is None else right.shape[0]
    dt = _math_dtype(x)
    # two plain GEMMs (X_r P2 over all rows, then P1 on the transposed blocks) rather than a
    # matmul broadcast over every row: 1.1-2.2x faster on the CPU with autograd (FlatQuant training)
    z = x.to(dt).reshape(-1, n1, n2)
    if right is not None:
        z = (z.reshape(-1, n2) @ right.to(x.device, dt)).reshape(-1, n1, n2)
    y = z.transpose(1, 2).reshape(-1, n1) @ left.to(x.device, dt)  # rows of (P1^T X_r P2)^T
    return y.reshape(-1, n2, n1).transpose(1, 2).reshape(x.shape)


def hadamard_transform(x, signs=None):
    return hadamard_rows(x, signs).to(x.dtype)


def kron_transform(x, left, right):
    return kron_rows(x, left, right).to(x.dtype)


def transformed_fp32(x, smooth=None, hadamard_signs=None, kron_left=None, kron_right=None):
    """The activation quantize_act quantizes: x / smooth, then the online transform, in fp32."""
    xf = x.float()
    if smooth is not None:
        xf = xf / smooth.float()
    if hadamard_signs is not None:
        xf = hadamard_rows(xf, hadamard_signs)
    elif kron_left is not None:
        xf = kron_rows(xf, kron_left, kron_right)
    return xf


def quantize_act(x, bits: int, smooth=None, hadamard_signs=None, kron_left=None, kron_right=None,
                 clip_ratio: float = 1.0):
    """Per-token symmetric quantization of the transformed x [M, K].

    Per token: absmax = fp32(clip_ratio) * max|x'| (x' the transformed row; one fp32 product),
    scale = absmax / qmax, q = clamp(rint(x' * (qmax / absmax)), -qmax, qmax).
    Returns (q, scale): q int8 [M, K] for bits = 8, packed int4 uint8 [M, K/2] for bits = 4;
    scale fp32 [M].
    """
    xf = transformed_fp32(x, smooth, hadamard_signs, kron_left, kron_right)
    q, scale = formats.quantize_act_sym(xf, bits, clip_ratio)
    return (formats.pack_a4(q, check=False) if bits == 4 else q), scale


# -------------------------------------------------------------- integer GEMMs


def _int_gemm(xq_int, x_scale, wq_int, w_scale, bias, out_dtype):
    # int8 x int8 products summed over K <= 2^20 stay far below 2^53: exact in fp64,
    # then the kernel epilogue: fp32(acc) * x_scale[m] * w_scale[n] (+ bias).
    acc = (xq_int.double() @ wq_int.double().t()).float()
    y = acc * x_scale.float()[:, None] * w_scale.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def w4a8_gemm(xq, x_scale, qweight, w_scale, bias=None, out_dtype=torch.float16):
    """int8 xq [M, K] x int4 W [N, K] -> [M, N] out_dtype."""
    w = formats.unpack_w4_sym(qweight, w_scale.shape[0], xq.shape[1])
    return _int_gemm(xq, x_scale, w, w_scale, bias, out_dtype)


def w4a4_gemm(xq, x_scale, qweight, w_scale, bias=None, out_dtype=torch.float16):
    """packed int4 xq [M, K/2] x int4 W [N, K] -> [M, N] out_dtype."""
    x = formats.unpack_a4(xq)
    w = formats.unpack_w4_sym(qweight, w_scale.shape[0], x.shape[1])
    return _int_gemm(x, x_scale, w, w_scale, bias, out_dtype)


def w8a8_gemm(xq, x_scale, qweight, w_scale, bias=None, out_dtype=torch.float16):
    """int8 xq [M, K] x int8 W [N, K] -> [M, N] out_dtype."""
    w = formats.unpack_w8(qweight, w_scale.shape[0], xq.shape[1])
    return _int_gemm(xq, x_scale, w, w_scale, bias, out_dtype)


INT_GEMMS = {(8, 4): w4a8_gemm, (4, 4): w4a4_gemm, (8, 8): w8a8_gemm}  # (a_bits, w_bits) -> the GEMM op's reference


def int_linear(x, qweight, w_scale, bias, a_bits: int, w_bits: int, smooth=None, hadamard_signs=None,
               kron_left=None, kron_right=None, clip_ratio: float = 1.0):
    """quantize_act(x) then the integer GEMM of (a_bits, w_bits); [M, N] in x.dtype."""
    xq, xs = quantize_act(x, a_bits, smooth, hadamard_signs, kron_left, kron_right, clip_ratio)
    return INT_GEMMS[(a_bits, w_bits)](xq, xs, qweight, w_scale, bias, x.dtype)
