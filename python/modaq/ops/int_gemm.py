"""Integer GEMM ops with the per-token x per-channel scale epilogue:
modaq::w4a8_gemm, modaq::w4a4_gemm, modaq::w8a8_gemm.

y[m, n] = fp32(sum_k xq[m, k] * wq[n, k]) * x_scale[m] * w_scale[n] (+ bias[n]), in out_dtype.
Activations come from quantize_act; weights from formats.pack_w4_sym / pack_w8.
"""
from __future__ import annotations

import torch

from . import _validate as v
from . import reference
from ._registry import define_op

_SCHEMA = "(Tensor xq, Tensor x_scale, Tensor qweight, Tensor w_scale, Tensor? bias, ScalarType out_dtype) -> Tensor"


def _fake(xq, x_scale, qweight, w_scale, bias, out_dtype):
    return xq.new_empty(xq.shape[0], w_scale.shape[0], dtype=out_dtype)


_ops = {name: define_op(name, _SCHEMA, getattr(reference, name), _fake)
        for name in ("w4a8_gemm", "w4a4_gemm", "w8a8_gemm")}

# (activation dtype, activation values per stored element, weight dtype, weight bits)
_LAYOUT = {
    "w4a8_gemm": (torch.int8, 1, torch.uint8, 4),
    "w4a4_gemm": (torch.uint8, 2, torch.uint8, 4),
    "w8a8_gemm": (torch.int8, 1, torch.int8, 8),
}


def _run(name, xq, x_scale, qweight, w_scale, bias, out_dtype):
    a_dtype, per_elem, w_dtype, w_bits = _LAYOUT[name]
    v.tensor("xq", xq, (a_dtype,), dim=2)
    m, k = xq.shape[0], xq.shape[1] * per_elem
    dev = xq.device
    v.tensor("x_scale", x_scale, (torch.float32,), dim=1, device=dev)
    v.shape("x_scale", x_scale, (m,))
    v.tensor("w_scale", w_scale, (torch.float32,), dim=1, device=dev, contiguous=True)
    n = w_scale.shape[0]
    v.tensor("qweight", qweight, (w_dtype,), device=dev, contiguous=True)
    v.numel("qweight", qweight, n * k * w_bits // 8, f"{w_bits}-bit packed [{n}, {k}]")
    v.bias(bias, n, dev)
    v.out_dtype(out_dtype)
    return _ops[name](xq.contiguous(), x_scale.contiguous(), qweight, w_scale, bias, out_dtype)


def w4a8_gemm(xq, x_scale, qweight, w_scale, bias=None, out_dtype=torch.float16) -> torch.Tensor:
    """int8 activations x int4 weights.

    xq: int8 [M, K]; x_scale: float32 [M]; qweight: formats.pack_w4_sym of [N, K];
    w_scale: float32 [N]; bias: [N] or None.  Returns [M, N] in out_dtype.
    """
    return _run("w4a8_gemm", xq, x_scale, qweight, w_scale, bias, out_dtype)


def w4a4_gemm(xq, x_scale, qweight, w_scale, bias=None, out_dtype=torch.float16) -> torch.Tensor:
    """int4 activations (uint8 [M, K/2], formats.pack_a4) x int4 weights; see w4a8_gemm."""
    return _run("w4a4_gemm", xq, x_scale, qweight, w_scale, bias, out_dtype)


def w8a8_gemm(xq, x_scale, qweight, w_scale, bias=None, out_dtype=torch.float16) -> torch.Tensor:
    """int8 activations x int8 weights (formats.pack_w8 of [N, K]); see w4a8_gemm."""
    return _run("w8a8_gemm", xq, x_scale, qweight, w_scale, bias, out_dtype)
