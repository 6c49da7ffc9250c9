"""InternVL (transformers' native InternVLForConditionalGeneration: InternVL2.5 / 3 "-hf").

  vision      model.vision_tower.encoder.layer[i]   InternViT layers: layernorm_before ->
              attention.{q,k,v}_proj -> attention.projection_layer (layer scale lambda_1),
              layernorm_after -> mlp.fc1 -> act -> mlp.fc2 (layer scale lambda_2)
  projector   model.multi_modal_projector   layer_norm (over the pixel-shuffled 4D channels)
              -> linear_1 -> GELU -> linear_2; layer_norm sits right before linear_1 and absorbs
  language    model.language_model.layers[i]   Qwen2 / Llama decoder layers
"""
from __future__ import annotations

from torch import nn

from .base import Adapter, LinearGroup, get_submodule, vit_groups


class InternVLAdapter(Adapter):
    families = ("internvl",)

    def vision_blocks(self) -> tuple[str, nn.ModuleList]:
        name = "model.vision_tower.encoder.layer"
        return name, get_submodule(self.model, name)

    def projector(self) -> tuple[str, nn.Module]:
        name = "model.multi_modal_projector"
        return name, get_submodule(self.model, name)

    def language_blocks(self) -> tuple[str, nn.ModuleList]:
        name = "model.language_model.layers"
        return name, get_submodule(self.model, name)

    def vision_groups(self, block: nn.Module) -> list[LinearGroup]:
        return vit_groups(block, "attention", ("q_proj", "k_proj", "v_proj"), "projection_layer",
                          "layernorm_before", "layernorm_after")

    def projector_groups(self, block: nn.Module) -> list[LinearGroup]:
        return [LinearGroup(("linear_1",), "layer_norm", "norm"), LinearGroup(("linear_2",))]
