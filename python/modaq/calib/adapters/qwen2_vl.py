"""Qwen2-VL and Qwen2.5-VL.

  vision      model.visual.blocks[i]   Qwen2-VL: LayerNorm norm1 -> fused attn.qkv, attn.proj,
                                       norm2 -> mlp.fc1 -> act -> mlp.fc2
                                       Qwen2.5-VL: RMSNorm norms, gated mlp (gate/up/down)
  projector   model.visual.merger      ln_q, then 4 merged patches -> mlp.0 -> GELU -> mlp.2
  language    model.language_model.layers[i]   Qwen2 decoder layers

The merger's ln_q normalizes 1 patch (D channels) but mlp.0 reads 4 patches (4D), so ln_q cannot
absorb a 4D scale: mlp.0 keeps its scale in the module.  attn.proj reads the v part of the fused
qkv output; folding into a slice of qkv is not done, so it keeps its scale too.

Vision residual stream: patch_embed.proj writes it (no position embeddings: rotary), attn.proj
and fc2 / down_proj add to it, norm1 / norm2 and the merger's ln_q read it (ln_q -> mlp.0 reads
4 patches, tile 4).  Qwen2-VL's norms are LayerNorms (centered and converted before rotating),
Qwen2.5-VL's RMSNorms.
"""
from __future__ import annotations

from torch import nn

from .base import Adapter, LinearGroup, get_submodule, has_submodule
from .streams import NormReader, ResidualStream, Writer


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

    def vision_stream(self) -> ResidualStream:
        visual = self._visual()
        _, blocks = self.vision_blocks()
        dim = int(blocks[0].norm1.weight.numel())
        writers, readers = [Writer(f"{visual}.patch_embed.proj", "conv")], []
        for i, block in enumerate(blocks):
            p = f"{visual}.blocks.{i}"
            mlp = ((f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"), f"{p}.mlp.down_proj") \
                if has_submodule(block, "mlp.gate_proj") else ((f"{p}.mlp.fc1",), f"{p}.mlp.fc2")
            writers += [Writer(f"{p}.attn.proj", "linear"), Writer(mlp[1], "linear")]
            readers += [NormReader(f"{p}.norm1", (f"{p}.attn.qkv",)), NormReader(f"{p}.norm2", mlp[0])]
        merger_name, merger = self.projector()
        readers.append(NormReader(f"{merger_name}.ln_q", (f"{merger_name}.mlp.0",), merger.hidden_size // dim))
        return ResidualStream("vision", dim, tuple(writers), tuple(readers))
