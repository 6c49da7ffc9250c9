"""Quantization helpers shared by the methods: the deployed quantizers, fake quantization,
and the modality-weighted token error of modality.py."""
from __future__ import annotations

import torch

from ... import formats
from ..records import InputRecord


def quantize_weight(w: torch.Tensor, fmt: formats.QuantFormat, group_size: int | None):
    """RTN in the module's format: AsymWeight (weight-only, groups) or SymWeight (per channel)."""
    if fmt.weight_symmetric:
        return formats.quantize_weight_sym(w, fmt.weight_bits)
    return formats.quantize_weight_asym(w, fmt.weight_bits, group_size)


def dequantize(qw, group_size: int | None) -> torch.Tensor:
    if isinstance(qw, formats.SymWeight):
        return formats.dequantize_weight_sym(qw.q, qw.scale)
    return formats.dequantize_weight_asym(qw.q, qw.scale, qw.zero, group_size)


def fake_weight(w: torch.Tensor, fmt: formats.QuantFormat, group_size: int | None) -> torch.Tensor:
    """Quantize-dequantize w [N, K] (fp32) exactly as the deployed module will."""
    return dequantize(quantize_weight(w, fmt, group_size), group_size)


def fake_act(x: torch.Tensor, fmt: formats.QuantFormat) -> torch.Tensor:
    """Per-token activation quantize-dequantize (identity for weight-only formats)."""
    return formats.fake_quantize_act(x, fmt.act_bits)


def token_weights(record: InputRecord, coeffs: tuple[float, float]) -> torch.Tensor:
    """w_t = c_t * (a_v if vision else a_t) for the kept tokens: sum_t w_t e_t is the loss."""
    a_v, a_t = coeffs
    vis = record.vision
    return record.importance * torch.where(vis, torch.full_like(record.importance, a_v),
                                           torch.full_like(record.importance, a_t))


def token_error(dy: torch.Tensor, loss: str) -> torch.Tensor:
    """e_t per token of dy [T, N]: sum of |dy| (MAE) or dy^2 (MSE) over channels, float32 [T]."""
    if loss == "mae":
        return dy.abs().sum(-1)
    if loss == "mse":
        return dy.square().sum(-1)
    raise ValueError(f"loss: expected 'mae' or 'mse', got {loss!r}")


def supported_reason(linear: torch.nn.Linear, fmt: formats.QuantFormat, group_size: int | None) -> str | None:
    """Why `linear` cannot take `fmt` (None when it can): modules need K % group == 0 for
    weight-only formats, K % 8 == 0 for 3-bit packing, even K for 4-bit packing."""
    k = linear.in_features
    if fmt.weight_only and k % group_size:
        return f"in_features {k} not divisible by group_size {group_size}"
    if fmt.weight_bits == 3 and k % 8:
        return f"in_features {k} not a multiple of 8 (3-bit packing)"
    if 4 in (fmt.weight_bits, fmt.act_bits) and k % 2:
        return f"in_features {k} is odd (4-bit packing)"
    return None
