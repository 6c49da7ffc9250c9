"""Capture the inputs of a stage's blocks, and place modules on the calibration device.

`capture_stage` runs the whole model forward on each sample with every block of the stage
replaced by a stub that records its call (positional args, kwargs: attention masks, rotary
position embeddings, cu_seqlens, ...) and passes the hidden states through; the stub of the last
block stops the forward.  So the capture costs the stages before this one (already quantized)
plus nothing of this one, and each block gets its own kwargs (Qwen2.5-VL's vision blocks
alternate window / full attention; sliding-window decoder layers get their own masks).
Kwargs shared by all blocks are stored once (the stubs keep references, not copies).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters.base import Stage
from .data import CalibSample


class _StopForward(Exception):
    pass


@dataclass
class BlockCall:
    """A block's call minus its hidden-states input."""

    args: tuple
    kwargs: dict
    hidden_as_kwarg: bool = False

    def run(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.hidden_as_kwarg:
            out = block(*self.args, hidden_states=hidden, **self.kwargs)
        else:
            out = block(hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class SampleTrace:
    """One sample's view of a stage: block-0 input, one BlockCall per block, and the per-token
    modality mask (bool [tokens], True = vision; None = every token is vision)."""

    hidden: torch.Tensor
    calls: list[BlockCall] = field(default_factory=list)
    vision_mask: torch.Tensor | None = None


def _stub(index: int, last: int, calls: list[BlockCall], first_hidden: list):
    def forward(*args, **kwargs):
        if args:
            hidden, rest, as_kwarg = args[0], args[1:], False
        elif "hidden_states" in kwargs:
            hidden, rest, as_kwarg = kwargs.pop("hidden_states"), (), True
        else:
            raise ValueError("capture: a block was called without hidden states (positional or hidden_states=)")
        calls.append(BlockCall(rest, kwargs, as_kwarg))
        if index == 0:
            first_hidden.append(hidden)
        if index == last:
            raise _StopForward
        return hidden
    return forward


def to_device(obj, device: torch.device, memo: dict | None = None):
    """Move tensors inside (nested) tuples / lists / dicts to `device`; with `memo`, a tensor
    reached twice (the rotary embeddings every block gets) is moved once and stays shared."""
    if isinstance(obj, torch.Tensor):
        if memo is None:
            return obj.to(device)
        if id(obj) not in memo:
            memo[id(obj)] = (obj, obj.to(device))  # keep obj alive so its id is not reused
        return memo[id(obj)][1]
    if isinstance(obj, dict):
        return {k: to_device(v, device, memo) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device, memo) for v in obj)
    return obj


def cast_floating(obj, dtype: torch.dtype):
    """Floating tensors inside (nested) tuples / lists / dicts cast to `dtype` (ids, masks of
    integers and cu_seqlens untouched)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: cast_floating(v, dtype) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(cast_floating(v, dtype) for v in obj)
    return obj


def move_except(root: nn.Module, device: torch.device, keep: list[nn.Module]) -> None:
    """Move `root` to `device` except the subtrees in `keep` (left where they are)."""
    keep_ids = {id(m) for m in keep}

    def contains_kept(mod: nn.Module) -> bool:
        return any(id(m) in keep_ids for m in mod.modules())

    def visit(mod: nn.Module) -> None:
        if id(mod) in keep_ids:
            return
        if not contains_kept(mod):
            mod.to(device)
            return
        for name, p in list(mod._parameters.items()):
            if p is not None:
                p.data = p.data.to(device)
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = b.to(device)
        for child in mod.children():
            visit(child)

    visit(root)


@torch.no_grad()
def capture_stage(model: nn.Module, stage: Stage, samples: list[CalibSample], device: torch.device,
                  store_device: torch.device, vision_masks: list[torch.Tensor | None]) -> list[SampleTrace]:
    """Per-sample traces of `stage` (see module docstring).  Blocks of this and later stages
    stay on the CPU, the rest of the model runs on `device`; captured tensors go to `store_device`."""
    traces = []
    for sample, vmask in zip(samples, vision_masks):
        calls: list[BlockCall] = []
        first: list[torch.Tensor] = []
        last = len(stage.blocks) - 1
        for i, block in enumerate(stage.blocks):
            block.forward = _stub(i, last, calls, first)
        try:
            model(**to_device(sample.inputs, device), use_cache=False)
        except _StopForward:
            pass
        finally:
            for block in stage.blocks:
                del block.forward
        if len(calls) != len(stage.blocks):
            raise RuntimeError(f"capture: the forward pass ran {len(calls)} of the {len(stage.blocks)} "
                               f"{stage.kind} blocks; does every calibration sample hold an image?")
        memo: dict = {}
        calls = [BlockCall(to_device(c.args, store_device, memo), to_device(c.kwargs, store_device, memo),
                           c.hidden_as_kwarg) for c in calls]
        traces.append(SampleTrace(first[0].to(store_device), calls,
                                  None if vmask is None else vmask.to(store_device)))
    return traces
