"""InternVL (transformers' native InternVLForConditionalGeneration: InternVL2.5 / 3 "-hf").

  vision      model.vision_tower.encoder.layer[i]   InternViT layers: layernorm_before ->
              attention.{q,k,v}_proj -> attention.projection_layer (layer scale lambda_1),
              layernorm_after -> mlp.fc1 -> act -> mlp.fc2 (layer scale lambda_2)
  projector   model.multi_modal_projector   layer_norm (over the pixel-shuffled 4D channels)
              -> linear_1 -> GELU -> linear_2; layer_norm sits right before linear_1 and absorbs
  language    model.language_model.layers[i]   Qwen2 / Llama decoder layers

Vision residual stream: the patch projection, CLS token and position embeddings start it, the
attention projection_layer and mlp.fc2 (each times its layer scale lambda) add to it; the layer
norms and the projector's layer_norm (over 4 pixel-shuffled tokens: tile 4) read it.  That
LayerNorm subtracts the mean of 4 tokens together, so it sees the differences between the
tokens' own means: the stream cannot be centered (its LayerNorms stay; rotations preserve the
mean).  With a final vision layernorm (use_mean_pooling=False) the stream ends in a norm whose
output no Linear reads, so it is not rotated offline.
"""
from __future__ import annotations

from torch import nn

from .base import Adapter, LinearGroup, get_submodule, vit_groups
from .streams import NormReader, ResidualStream, Writer


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

    def vision_stream(self) -> ResidualStream | None:
        tower_name = "model.vision_tower"
        tower = get_submodule(self.model, tower_name)
        if not isinstance(tower.layernorm, nn.Identity):
            self.stream_limitation = "InternViT with a final layernorm (use_mean_pooling=False)"
            return None
        emb = f"{tower_name}.embeddings"
        writers = [Writer(f"{emb}.patch_embeddings.projection", "conv"), Writer(f"{emb}.cls_token", "vector")]
        writers += [Writer(f"{emb}.{p}", "vector") for p in ("position_embeddings", "mask_token")
                    if getattr(tower.embeddings, p, None) is not None]
        readers = []
        for i in range(len(tower.encoder.layer)):
            p = f"{tower_name}.encoder.layer.{i}"
            writers += [Writer(f"{p}.attention.projection_layer", "linear", f"{p}.lambda_1"),
                        Writer(f"{p}.mlp.fc2", "linear", f"{p}.lambda_2")]
            readers += [NormReader(f"{p}.layernorm_before", tuple(f"{p}.attention.{n}_proj" for n in "qkv")),
                        NormReader(f"{p}.layernorm_after", (f"{p}.mlp.fc1",))]
        proj = "model.multi_modal_projector"
        tile = round(1 / self.config.downsample_ratio ** 2)
        readers.append(NormReader(f"{proj}.layer_norm", (f"{proj}.linear_1",), tile))
        return ResidualStream("vision", int(tower.config.hidden_size), tuple(writers), tuple(readers),
                              centerable=False)
