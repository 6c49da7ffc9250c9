"""Integer GEMM ops with the per-token x per-channel scale epilogue:
modaq::w4a8_gemm, modaq::w4a4_gemm, modaq::w8a8_gemm, and the whole quantized linear
modaq::int_linear (quantize_act + one of them; one fused kernel at decode sizes).

y[m, n] = fp32(sum_k xq[m, k] * wq[n, k]) * x_scale[m] * w_scale[n] (+ bias[n]), in out_dtype.
Activations come from quantize_act; weights from formats.pack_w4_sym / pack_w8.
"""
from __future__ import annotations

import torch

from . import _validate as v
from . import reference
from ._registry import define_op
from .activation import check_quantize_args

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


def _check_weight(qweight, w_scale, bias, w_dtype, w_bits: int, k: int, dev) -> int:
    """Validate the packed weight, its scales and the bias for in_features k; returns N."""
    v.tensor("w_scale", w_scale, (torch.float32,), dim=1, device=dev, contiguous=True)
    n = w_scale.shape[0]
    v.tensor("qweight", qweight, (w_dtype,), device=dev, contiguous=True)
    v.numel("qweight", qweight, n * k * w_bits // 8, f"{w_bits}-bit packed [{n}, {k}]")
    v.bias(bias, n, dev)
    return n


def _run(name, xq, x_scale, qweight, w_scale, bias, out_dtype):
    a_dtype, per_elem, w_dtype, w_bits = _LAYOUT[name]
    v.tensor("xq", xq, (a_dtype,), dim=2)
    m, k = xq.shape[0], xq.shape[1] * per_elem
    dev = xq.device
    v.tensor("x_scale", x_scale, (torch.float32,), dim=1, device=dev)
    v.shape("x_scale", x_scale, (m,))
    _check_weight(qweight, w_scale, bias, w_dtype, w_bits, k, dev)
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


_int_linear = define_op(
    "int_linear",
    "(Tensor x, Tensor qweight, Tensor w_scale, Tensor? bias, int a_bits, int w_bits, Tensor? smooth, "
    "Tensor? hadamard_signs, Tensor? kron_left, Tensor? kron_right, float clip_ratio=1.0) -> Tensor",
    reference.int_linear,
    lambda x, qweight, w_scale, *args: x.new_empty(x.shape[0], w_scale.shape[0]))

GEMM_OF_BITS = {bits: fn.__name__ for bits, fn in reference.INT_GEMMS.items()}  # (a_bits, w_bits) -> op name


def int_linear(x, qweight, w_scale, bias=None, *, a_bits: int, w_bits: int, smooth=None, hadamard_signs=None,
               kron_left=None, kron_right=None, clip_ratio: float = 1.0) -> torch.Tensor:
    """The whole W4A8 / W4A4 / W8A8 linear: quantize_act(x, a_bits, smooth, transform, clip_ratio)
    followed by the integer GEMM, as one op (at decode sizes without a transform, one kernel).

    x: [..., K] float16 / bfloat16 / float32; (a_bits, w_bits): (8, 4), (4, 4) or (8, 8);
    qweight / w_scale / bias as for w4a8_gemm / w4a4_gemm / w8a8_gemm; the other arguments as
    for quantize_act.  Returns [..., N] in x's dtype, equal to the two ops run in sequence.
    """
    if (a_bits, w_bits) not in GEMM_OF_BITS:
        raise ValueError(f"a_bits / w_bits: expected (8, 4), (4, 4) or (8, 8), got ({a_bits!r}, {w_bits!r})")
    clip_ratio = check_quantize_args(x, a_bits, smooth, hadamard_signs, kron_left, kron_right, clip_ratio)
    _, _, w_dtype, _ = _LAYOUT[GEMM_OF_BITS[(a_bits, w_bits)]]
    n = _check_weight(qweight, w_scale, bias, w_dtype, w_bits, x.shape[-1], x.device)
    y = _int_linear(v.rows(x), qweight, w_scale, bias, a_bits, w_bits, smooth, hadamard_signs, kron_left,
                    kron_right, clip_ratio)
    return y.reshape(*x.shape[:-1], n)
