"""Weight-only GEMM ops: modaq::w3a16_gemm and modaq::w4a16_gemm.

y[M, N] = x[M, K] @ ((q - zero) * scale)^T (+ bias), q 3- or 4-bit, groups of g along K,
fp32 accumulation, y in x.dtype.  Weights come in the layouts of formats.pack_w3 / pack_w4.
"""
from __future__ import annotations

import math

import torch

from .. import weight_only_layout
from . import _validate as v
from . import reference
from ._registry import define_op

_SCHEMA = "(Tensor x, Tensor qweight, Tensor scales, Tensor zeros, int out_features, int group_size, Tensor? bias) -> Tensor"
GROUP_SIZES = (64, 128)


def _fake(x, qweight, scales, zeros, out_features, group_size, bias):
    return x.new_empty(x.shape[0], out_features)


_w3a16 = define_op("w3a16_gemm", _SCHEMA, reference.w3a16_gemm, _fake)
_w4a16 = define_op("w4a16_gemm", _SCHEMA, reference.w4a16_gemm, _fake)


def _check(bits, x, qweight, scales, zeros, out_features, group_size, bias):
    v.activation("x", x)
    k = x.shape[-1]
    n = v.positive_int("out_features", out_features)
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size: expected one of {GROUP_SIZES}, got {group_size!r}")
    if k % group_size:
        raise ValueError(f"x: in_features K = {k} must be divisible by group_size = {group_size}")
    dev = x.device
    expected = weight_only_layout.packed_shapes(bits, n, k, group_size)  # pack_w3 / pack_w4 output
    for name, t in (("qweight", qweight), ("scales", scales), ("zeros", zeros)):
        shape, dtype = expected[name]
        v.tensor(name, t, (dtype,), device=dev, contiguous=True)
        v.numel(name, t, math.prod(shape), f"pack_w{bits} of [{n}, {k}] with group_size {group_size}")
    v.bias(bias, n, dev)


def w3a16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               out_features: int, group_size: int = 128, bias: torch.Tensor | None = None) -> torch.Tensor:
    """3-bit group-asymmetric weight-only linear.

    x: [..., K] float16 / bfloat16 (float32 runs the reference); qweight / scales / zeros from
    `formats.pack_w3`; bias: [N] or None.  Returns [..., N] in x.dtype.
    """
    _check(3, x, qweight, scales, zeros, out_features, group_size, bias)
    y = _w3a16(v.rows(x), qweight, scales, zeros, out_features, group_size, bias)
    return y.reshape(*x.shape[:-1], out_features)


def w4a16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               out_features: int, group_size: int = 128, bias: torch.Tensor | None = None) -> torch.Tensor:
    """4-bit group-asymmetric weight-only linear (see w3a16_gemm; weights from `formats.pack_w4`)."""
    _check(4, x, qweight, scales, zeros, out_features, group_size, bias)
    y = _w4a16(v.rows(x), qweight, scales, zeros, out_features, group_size, bias)
    return y.reshape(*x.shape[:-1], out_features)
