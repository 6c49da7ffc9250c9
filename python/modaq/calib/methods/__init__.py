"""Calibration methods; `get_method(name)` returns one (names: config.METHODS)."""
from __future__ import annotations

from .awq import AWQ
from .base import BlockData, BlockJob, GroupJob, LinearPlan, Method
from .flatquant import FlatQuant
from .gptq import GPTQ
from .mbq import MBQ
from .quarot import QuaRot
from .rtn import RTN
from .smoothquant import SmoothQuant

METHOD_CLASSES: dict[str, type[Method]] = {c.name: c for c in (RTN, GPTQ, AWQ, SmoothQuant, MBQ, QuaRot, FlatQuant)}


def get_method(name: str, config=None) -> Method:
    if name not in METHOD_CLASSES:
        raise ValueError(f"method: expected one of {tuple(METHOD_CLASSES)}, got {name!r}")
    return METHOD_CLASSES[name](config)


__all__ = ["Method", "BlockJob", "BlockData", "GroupJob", "LinearPlan", "get_method", "METHOD_CLASSES",
           "RTN", "GPTQ", "AWQ", "SmoothQuant", "MBQ", "QuaRot", "FlatQuant"]
