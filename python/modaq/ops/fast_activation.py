"""CUDA (_C) backend of modaq::quantize_act."""
from __future__ import annotations

import torch

from . import _cuda
from ._registry import register_fast


def _supported(x, smooth, hadamard_signs, kron_left) -> bool:
    return x.dtype in (torch.float16, torch.bfloat16) and hadamard_signs is None and kron_left is None


@register_fast("quantize_act", "cuda (online transforms: reference)", _cuda.available)
def quantize_act_cuda(x, bits, smooth, hadamard_signs, kron_left, kron_right):
    if not _supported(x, smooth, hadamard_signs, kron_left):
        from .reference import quantize_act
        return quantize_act(x, bits, smooth, hadamard_signs, kron_left, kron_right)
    m, k = x.shape
    q = torch.empty(m, k // 2 if bits == 4 else k, dtype=torch.uint8 if bits == 4 else torch.int8, device=x.device)
    scale = torch.empty(m, dtype=torch.float32, device=x.device)
    dev, stream = _cuda.launch_args(x)
    _cuda._C.quantize_act(_cuda.ptr(x), _cuda.ptr(smooth), _cuda.ptr(q), _cuda.ptr(scale),
                          m, k, bits, _cuda.DTYPE_CODE[x.dtype], dev, stream)
    return q, scale
