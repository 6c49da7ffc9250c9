"""LLaVA-1.5 (CLIP ViT + Llama) and LLaVA-OneVision (SigLIP + Qwen2), one adapter.

  vision      model.vision_tower.vision_model.encoder.layers[i]   CLIP / SigLIP encoder layers:
              layer_norm1 -> self_attn.{q,k,v}_proj -> self_attn.out_proj,
              layer_norm2 -> mlp.fc1 -> act -> mlp.fc2
  projector   model.multi_modal_projector   linear_1 -> GELU -> linear_2
  language    model.language_model.layers[i]   Llama / Qwen2 decoder layers

LLaVA feeds the decoder the output of vision layer `vision_feature_layer` (-2 for LLaVA-1.5,
-1 for OneVision), so later vision layers never reach the decoder: they are quantized anyway
(they stay in the checkpoint) and their MBQ gradients are zero.
"""
from __future__ import annotations

from torch import nn

from .base import Adapter, LinearGroup, get_submodule, has_submodule, vit_groups


class LlavaAdapter(Adapter):
    families = ("llava", "llava_onevision")

    def vision_blocks(self) -> tuple[str, nn.ModuleList]:
        tower = "model.vision_tower" if has_submodule(self.model, "model.vision_tower") else "vision_tower"
        for inner in ("vision_model.encoder.layers", "encoder.layers"):
            name = f"{tower}.{inner}"
            if has_submodule(self.model, name):
                return name, get_submodule(self.model, name)
        raise ValueError(f"model: no encoder layers under {tower!r} (expected a CLIP or SigLIP vision tower)")

    def projector(self) -> tuple[str, nn.Module]:
        name = "model.multi_modal_projector" if has_submodule(self.model, "model.multi_modal_projector") \
            else "multi_modal_projector"
        return name, get_submodule(self.model, name)

    def language_blocks(self) -> tuple[str, nn.ModuleList]:
        name = "model.language_model.layers" if has_submodule(self.model, "model.language_model") \
            else "language_model.model.layers"
        return name, get_submodule(self.model, name)

    def vision_groups(self, block: nn.Module) -> list[LinearGroup]:
        return vit_groups(block, "self_attn", ("q_proj", "k_proj", "v_proj"), "out_proj", "layer_norm1", "layer_norm2")

    def projector_groups(self, block: nn.Module) -> list[LinearGroup]:
        return [LinearGroup(("linear_1",)), LinearGroup(("linear_2",))]
