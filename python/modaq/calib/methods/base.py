"""What a calibration method receives for one block and what it returns.

A method sees the block with its FP weights, one `GroupJob` per LinearGroup (the recorded input
statistics / subsample and each Linear's modality coefficients (a_v, a_t), see modality.py) and
returns a `LinearPlan` per quantizable Linear: the logical quantized weight in the module's basis,
and where an equalization scale s went (kept in the module as `smooth`, or folded upstream so
the Linear's input is now x / s).  The engine swaps the Linears for modaq modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ... import formats
from ..adapters.base import LinearGroup
from ..config import QuantConfig
from ..records import InputRecord


@dataclass
class LinearPlan:
    weight: formats.AsymWeight | formats.SymWeight
    smooth: torch.Tensor | None = None  # module divides its input by this at run time
    input_scale: torch.Tensor | None = None  # folded upstream: the Linear now reads x / input_scale


@dataclass
class GroupJob:
    group: LinearGroup
    linears: dict[str, nn.Linear]  # members to quantize
    record: InputRecord
    coeffs: dict[str, tuple[float, float]]  # (a_v, a_t) per member
    frozen: dict[str, nn.Linear] = field(default_factory=dict)  # members kept FP (unsupported shape)


@dataclass
class BlockJob:
    block: nn.Module
    fmt: formats.QuantFormat
    group_size: int | None
    groups: list[GroupJob]
    config: QuantConfig


class Method:
    """Base class: `run(job)` -> {linear name in block: LinearPlan}."""

    name: str = ""
    needs_gram: bool = False

    def run(self, job: BlockJob) -> dict[str, LinearPlan]:
        raise NotImplementedError
