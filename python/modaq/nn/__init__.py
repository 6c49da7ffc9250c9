"""Quantized drop-in Linear modules and their online rotations."""
from .quant_linear import (QUANT_LINEARS, QuantLinear, W3A16Linear, W4A4Linear, W4A8Linear,
                           W4A16Linear, W8A8Linear, from_config, prepare_weight)
from .norm import RMSNorm
from .rotation import Rotation

__all__ = ["QuantLinear", "W3A16Linear", "W4A16Linear", "W4A8Linear", "W4A4Linear", "W8A8Linear",
           "QUANT_LINEARS", "from_config", "prepare_weight", "Rotation", "RMSNorm"]
