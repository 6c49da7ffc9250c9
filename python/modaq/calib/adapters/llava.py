"""LLaVA-1.5 (CLIP ViT + Llama) and LLaVA-OneVision (SigLIP + Qwen2), one adapter.

  vision      model.vision_tower.vision_model.encoder.layers[i]   CLIP / SigLIP encoder layers:
              layer_norm1 -> self_attn.{q,k,v}_proj -> self_attn.out_proj,
              layer_norm2 -> mlp.fc1 -> act -> mlp.fc2
  projector   model.multi_modal_projector   linear_1 -> GELU -> linear_2
  language    model.language_model.layers[i]   Llama / Qwen2 decoder layers

LLaVA feeds the decoder the output of vision layer `vision_feature_layer` (-2 for LLaVA-1.5,
-1 for OneVision), so later vision layers never reach the decoder: they are quantized anyway
(they stay in the checkpoint) and their MBQ gradients are zero.

Residual streams: the projector reads the raw hidden states of a vision layer (no norm in
between), so the vision stream cannot be centered (LayerNorm -> RMSNorm would change the
projector's input): SigLIP's stream keeps its LayerNorms and takes mean-preserving rotations.
CLIP's pre_layrnorm writes the stream's start through its affine, which no rotation passes:
LLaVA-1.5's vision stream is not rotated (QuaRot then uses online Hadamards there).  The decoder
stream is rotated like every family's; OneVision also writes its image_newline into it.
"""
from __future__ import annotations

from torch import nn

from .base import Adapter, LinearGroup, get_submodule, has_submodule, vit_groups
from .streams import NormReader, ResidualStream, Writer


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

    def vision_stream(self) -> ResidualStream | None:
        name, layers = self.vision_blocks()
        tower = name.rsplit(".encoder.layers", 1)[0]
        if has_submodule(self.model, f"{tower}.pre_layrnorm"):
            self.stream_limitation = "CLIP's pre_layrnorm writes the vision stream through its affine"
            return None
        emb = f"{tower}.embeddings"
        writers = [Writer(f"{emb}.patch_embedding", "conv"), Writer(f"{emb}.position_embedding", "embedding")]
        readers = []
        for i in range(len(layers)):
            p = f"{name}.{i}"
            writers += [Writer(f"{p}.self_attn.out_proj", "linear"), Writer(f"{p}.mlp.fc2", "linear")]
            readers += [NormReader(f"{p}.layer_norm1", tuple(f"{p}.self_attn.{n}_proj" for n in "qkv")),
                        NormReader(f"{p}.layer_norm2", (f"{p}.mlp.fc1",))]
        proj, _ = self.projector()
        dim = int(layers[0].layer_norm1.weight.numel())
        return ResidualStream("vision", dim, tuple(writers), tuple(readers), raw_readers=(f"{proj}.linear_1",),
                              centerable=False)

    def language_stream_vectors(self) -> tuple[str, ...]:
        for name in ("model.image_newline", "image_newline"):
            try:
                self.model.get_parameter(name)
                return (name,)
            except AttributeError:
                continue
        return ()
