"""What a calibration method receives for one block and what it returns.

A method sees the block with its FP weights, one `GroupJob` per LinearGroup (the recorded input
statistics / subsample and each Linear's modality coefficients (a_v, a_t), see modality.py) and
returns a `LinearPlan` per quantizable Linear: the logical quantized weight in the module's basis,
where an equalization scale s went (kept in the module as `smooth`, or folded upstream so
the Linear's input is now x / s) and the online transform the module applies (rotation methods).
The engine swaps the Linears for modaq modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ... import formats
from ...nn import Rotation
from ..adapters.base import Adapter, LinearGroup
from ..config import QuantConfig
from ..records import InputRecord


@dataclass
class LinearPlan:
    weight: formats.AsymWeight | formats.SymWeight
    smooth: torch.Tensor | None = None  # module divides its input by this at run time
    input_scale: torch.Tensor | None = None  # folded upstream: the Linear now reads x / input_scale
    rotation: Rotation | None = None  # online transform the module applies after smoothing
    act_clip_ratio: float = 1.0  # activation range = ratio * per-token absmax (learned by FlatQuant)


@dataclass
class GroupJob:
    group: LinearGroup
    linears: dict[str, nn.Linear]  # members to quantize
    record: InputRecord
    coeffs: dict[str, tuple[float, float]]  # (a_v, a_t) per member
    frozen: dict[str, nn.Linear] = field(default_factory=dict)  # members kept FP (unsupported shape)


@dataclass
class BlockData:
    """The block's calibration data, for methods that train on the block output (FlatQuant):
    `run(block, i, dtype)` runs `block` on sample i's input (its captured call, floating tensors
    cast to `dtype` when given; autograd follows the caller's grad mode), `targets[i]` is the FP
    block's output on that input, `vision[i]` the bool mask of its vision tokens (None: all
    vision), and (a_v, a_t) the multipliers of the per-modality sums of token errors
    ||y_q - y||^2 of the block loss (modality.py)."""

    run: Callable[..., torch.Tensor]
    targets: list[torch.Tensor]
    vision: list[torch.Tensor | None]
    coeffs: tuple[float, float]


@dataclass
class BlockJob:
    block: nn.Module
    fmt: formats.QuantFormat
    group_size: int | None
    groups: list[GroupJob]
    config: QuantConfig
    name: str = ""  # the block's full module name
    data: BlockData | None = None


class Method:
    """Base class: `prepare(model, adapter)` once before calibration (computation-invariant
    rewrites of the whole model, e.g. rotations), then `run(job)` per block ->
    {linear name in block: LinearPlan}."""

    name: str = ""
    needs_gram: bool = False
    needs_block_data: bool = False

    def __init__(self, config: QuantConfig | None = None):
        self.config = config

    def prepare(self, model: nn.Module, adapter: Adapter) -> list[str]:
        """Rewrite the FP model before calibration; returns notes for the report."""
        return []

    def run(self, job: BlockJob) -> dict[str, LinearPlan]:
        raise NotImplementedError
