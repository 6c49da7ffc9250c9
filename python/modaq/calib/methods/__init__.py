"""Calibration methods; `get_method(name)` returns one (names: config.METHODS)."""
from __future__ import annotations

from .awq import AWQ
from .base import BlockJob, GroupJob, LinearPlan, Method
from .gptq import GPTQ
from .mbq import MBQ
from .rtn import RTN
from .smoothquant import SmoothQuant

METHOD_CLASSES: dict[str, type[Method]] = {c.name: c for c in (RTN, GPTQ, AWQ, SmoothQuant, MBQ)}


def get_method(name: str) -> Method:
    if name not in METHOD_CLASSES:
        raise ValueError(f"method: expected one of {tuple(METHOD_CLASSES)}, got {name!r}")
    return METHOD_CLASSES[name]()


__all__ = ["Method", "BlockJob", "GroupJob", "LinearPlan", "get_method", "METHOD_CLASSES",
           "RTN", "GPTQ", "AWQ", "SmoothQuant", "MBQ"]
