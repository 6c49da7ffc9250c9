"""Qwen2-VL and Qwen2.5-VL.

  vision      model.visual.blocks[i]   Qwen2-VL: LayerNorm norm1 -> fused attn.qkv, attn.proj,
                                       norm2 -> mlp.fc1 -> act -> mlp.fc2
                                       Qwen2.5-VL: RMSNorm norms, gated mlp (gate/up/down)
  projector   model.visual.merger      ln_q, then 4 merged patches -> mlp.0 -> GELU -> mlp.2
  language    model.language_model.layers[i]   Qwen2 decoder layers

The merger's ln_q normalizes 1 patch (D channels) but mlp.0 reads 4 patches (4D), so ln_q cannot
absorb a 4D scale: mlp.0 keeps its scale in the module.  attn.proj reads the v part of the fused
qkv output; folding into a slice of qkv is not done, so it keeps its scale too.
"""
from __future__ import annotations

from torch import nn

from .base import Adapter, LinearGroup, get_submodule, has_submodule


class Qwen2VLAdapter(Adapter):
    families = ("qwen2_vl", "qwen2_5_vl")

    def _visual(self) -> str:
        return "model.visual" if has_submodule(self.model, "model.visual") else "visual"

    def vision_blocks(self) -> tuple[str, nn.ModuleList]:
        name = f"{self._visual()}.blocks"
        return name, get_submodule(self.model, name)

    def projector(self) -> tuple[str, nn.Module]:
        name = f"{self._visual()}.merger"
        return name, get_submodule(self.model, name)

    def language_blocks(self) -> tuple[str, nn.ModuleList]:
        name = "model.language_model.layers" if has_submodule(self.model, "model.language_model") else "model.layers"
        return name, get_submodule(self.model, name)

    def vision_groups(self, block: nn.Module) -> list[LinearGroup]:
        groups = [LinearGroup(("attn.qkv",), "norm1", "norm", no_clip=("attn.qkv",)), LinearGroup(("attn.proj",))]
        if has_submodule(block, "mlp.gate_proj"):  # Qwen2.5-VL: gated MLP
            groups += [LinearGroup(("mlp.gate_proj", "mlp.up_proj"), "norm2", "norm"),
                       LinearGroup(("mlp.down_proj",), "mlp.up_proj", "linear")]
        else:
            groups += [LinearGroup(("mlp.fc1",), "norm2", "norm"), LinearGroup(("mlp.fc2",))]
        return groups

    def projector_groups(self, block: nn.Module) -> list[LinearGroup]:
        return [LinearGroup(("mlp.0",)), LinearGroup(("mlp.2",))]
