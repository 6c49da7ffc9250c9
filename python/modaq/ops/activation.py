"""Activation ops: modaq::quantize_act, modaq::hadamard_transform, modaq::kron_transform.

quantize_act is one pass over X: optional per-channel smoothing (x / s), optional online
transform (randomized Hadamard (x * signs) @ H_K / sqrt(K), or Kronecker P1^T X_r P2 with
K = n1 * n2), then per-token symmetric quantization (range clip_ratio * absmax, clip_ratio in
(0, 1], 1 = plain absmax) to int8 or packed int4 + fp32 scales.
"""
from __future__ import annotations

import torch

from .. import formats
from ..hadamard import hadamard_factors
from . import _validate as v
from . import reference
from ._registry import define_op

_F32 = (torch.float32,)


def _fake_quant(x, bits, smooth, hadamard_signs, kron_left, kron_right, clip_ratio=1.0):
    m, k = x.shape
    q = x.new_empty(m, k // 2, dtype=torch.uint8) if bits == 4 else x.new_empty(m, k, dtype=torch.int8)
    return q, x.new_empty(m, dtype=torch.float32)


_quantize_act = define_op(
    "quantize_act",
    "(Tensor x, int bits, Tensor? smooth, Tensor? hadamard_signs, Tensor? kron_left, Tensor? kron_right, "
    "float clip_ratio=1.0) -> (Tensor, Tensor)",
    reference.quantize_act, _fake_quant)
_hadamard = define_op("hadamard_transform", "(Tensor x, Tensor? signs) -> Tensor",
                      reference.hadamard_transform, lambda x, signs: torch.empty_like(x))
_kron = define_op("kron_transform", "(Tensor x, Tensor left, Tensor right) -> Tensor",
                  reference.kron_transform, lambda x, left, right: torch.empty_like(x))


def _check_hadamard(x, signs, name="hadamard_signs"):
    k = x.shape[-1]
    try:
        hadamard_factors(k)
    except ValueError as e:
        raise ValueError(f"x: in_features K = {k} has no Hadamard transform: {e}") from None
    if signs is not None:
        v.vector(name, signs, k, x.device, _F32)


def _check_kron(x, left, right):
    k = x.shape[-1]
    v.tensor("kron_left", left, _F32, dim=2, device=x.device)
    v.tensor("kron_right", right, _F32, dim=2, device=x.device)
    n1, n2 = left.shape[0], right.shape[0]
    if left.shape[1] != n1 or right.shape[1] != n2:
        raise ValueError(f"kron_left / kron_right: expected square matrices, got {tuple(left.shape)} and {tuple(right.shape)}")
    if n1 * n2 != k:
        raise ValueError(f"kron_left / kron_right: sizes {n1} x {n2} = {n1 * n2} must equal in_features K = {k}")


def quantize_act(x: torch.Tensor, bits: int = 8, smooth: torch.Tensor | None = None,
                 hadamard_signs: torch.Tensor | None = None, kron_left: torch.Tensor | None = None,
                 kron_right: torch.Tensor | None = None, clip_ratio: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token dynamic symmetric quantization with optional smoothing, online transform and clipping.

    x: [..., K] float16 / bfloat16 / float32.  smooth: [K] float32 divides x per channel.
    hadamard_signs: [K] float32 +-1 selects the randomized Hadamard transform (K = 2^k * m, see
    modaq.hadamard); kron_left [n1, n1] and kron_right [n2, n2] float32 (n1 * n2 = K) select
    the Kronecker transform.  clip_ratio: Python float in (0, 1] (activation clipping,
    FlatQuant's LAC): each token's scale is clip_ratio * absmax / qmax over the smoothed and
    transformed row, values beyond that range saturate at +-qmax; 1.0 is the plain absmax.
    A Python float (not a tensor) so it stays a constant under torch.compile / CUDA graphs.
    Returns (q, scale): q int8 [M, K] (bits = 8) or packed int4
    uint8 [M, K / 2] (bits = 4, formats.pack_a4), scale float32 [M], M = x.numel() / K.
    A token holding NaN / inf gets a non-finite scale (the NaN reaches the GEMM output).
    """
    clip_ratio = check_quantize_args(x, bits, smooth, hadamard_signs, kron_left, kron_right, clip_ratio)
    return _quantize_act(v.rows(x), bits, smooth, hadamard_signs, kron_left, kron_right, clip_ratio)


def check_quantize_args(x, bits, smooth, hadamard_signs, kron_left, kron_right, clip_ratio) -> float:
    """Validate quantize_act's arguments (also int_linear's activation side); returns the clip ratio."""
    v.activation("x", x)
    k = x.shape[-1]
    if bits not in (4, 8):
        raise ValueError(f"bits: expected 4 or 8, got {bits!r}")
    if bits == 4 and k % 2:
        raise ValueError(f"x: in_features K = {k} must be even for 4-bit activations")
    if smooth is not None:
        v.vector("smooth", smooth, k, x.device, _F32)
    if hadamard_signs is not None and (kron_left is not None or kron_right is not None):
        raise ValueError("hadamard_signs / kron_left: give one online transform, not both")
    if (kron_left is None) != (kron_right is None):
        raise ValueError("kron_left / kron_right: give both Kronecker factors or neither")
    if hadamard_signs is not None:
        _check_hadamard(x, hadamard_signs)
    if kron_left is not None:
        _check_kron(x, kron_left, kron_right)
    return formats.check_clip_ratio(clip_ratio)


def hadamard_transform(x: torch.Tensor, signs: torch.Tensor | None = None) -> torch.Tensor:
    """(x * signs) @ H_K / sqrt(K) over the last dim (orthonormal), same shape and dtype as x.

    K = 2^k * m with m a supported Hadamard order (modaq.hadamard); signs: [K] float32 or None.
    """
    v.activation("x", x)
    _check_hadamard(x, signs, "signs")
    return _hadamard(v.rows(x), signs).reshape(x.shape)


def kron_transform(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """x @ (left (x) right) over the last dim, i.e. left^T X_r right with X_r = x viewed [n1, n2]."""
    v.activation("x", x)
    _check_kron(x, left, right)
    return _kron(v.rows(x), left, right).reshape(x.shape)
