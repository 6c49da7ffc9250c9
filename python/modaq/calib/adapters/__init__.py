"""Model adapters: one file per VLM family; `get_adapter(model)` picks one by config.model_type."""
from __future__ import annotations

from torch import nn

from .base import Adapter, LinearGroup, Stage
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .qwen2_vl import Qwen2VLAdapter

ADAPTERS: tuple[type[Adapter], ...] = (Qwen2VLAdapter, LlavaAdapter, InternVLAdapter)
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(f for a in ADAPTERS for f in a.families)


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for `model` (a transformers VLM), chosen by `model.config.model_type`."""
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    for cls in ADAPTERS:
        if family in cls.families:
            return cls(model)
    raise ValueError(f"model: unsupported VLM family {family!r} ({type(model).__name__}); "
                     f"supported model_type values: {', '.join(SUPPORTED_FAMILIES)}")


__all__ = ["Adapter", "LinearGroup", "Stage", "get_adapter", "ADAPTERS", "SUPPORTED_FAMILIES",
           "Qwen2VLAdapter", "LlavaAdapter", "InternVLAdapter"]
