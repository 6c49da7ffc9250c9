"""The two benchmarked VLMs, built from their real configs with random weights (no download).

    llava_onevision   LLaVA-OneVision-Qwen2-7B (llava-hf/llava-onevision-qwen2-7b-ov-hf):
                      SigLIP so400m tower as the checkpoint keeps it (1152 wide, MLP 4304, 26 layers,
                      16 heads, patch 14, 384 px -> 729 tokens per crop, no pooling head), 2-layer
                      GELU projector, Qwen2-7B decoder (3584 / 18944, 28 layers, 28 heads, 4 KV heads,
                      vocab 152128: Qwen2's 152064 + 2 added tokens padded to a multiple of 64)
    qwen2_vl          Qwen2-VL-7B-Instruct: ViT 1280 wide, 32 blocks, 16 heads, MLP ratio 4,
                      quick-GELU, patch 14, temporal patch 2, 2x2 merger to 3584; decoder as Qwen2-7B
                      with M-RoPE sections (16, 24, 24), vocab 152064

`tiny=True` gives the same classes with a few small layers (the --dry-run models).  Weights are
random (timing does not depend on their values); the model is created directly on `device` in
`dtype` (no CPU initialization of 8B parameters).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

FAMILIES = ("llava_onevision", "qwen2_vl")
LABELS = {"llava_onevision": "LLaVA-OneVision-7B", "qwen2_vl": "Qwen2-VL-7B"}

_QWEN2_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6,
                 bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=False)
_TINY_TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


@dataclass(frozen=True)
class VisionInput:
    """One image size to time: a label for the table and the tokens the vision tower runs on."""

    label: str
    tokens: int  # tokens through the vision transformer blocks
    crops: int = 1  # SigLIP: 384 px crops in one batch
    grid: tuple[int, int] = (0, 0)  # Qwen2-VL: patch grid (h, w) of one image, before the 2x2 merge


def vision_inputs(family: str, tiny: bool) -> list[VisionInput]:
    """The image sizes timed for `family` (the full sizes, or the tiny --dry-run ones)."""
    if family == "llava_onevision":
        per_crop = 16 if tiny else 729
        crops = (1, 2) if tiny else (1, 5)
        return [VisionInput(f"{c} crop{'s' if c > 1 else ''} ({c * per_crop} tok)", c * per_crop, crops=c)
                for c in crops]
    grids = ((4, 4), (8, 8)) if tiny else ((64, 64), (128, 64))  # 896x896 and 1792x896 px
    return [VisionInput(f"{h * 14}x{w * 14} px ({h * w} patches -> {h * w // 4} tok)", h * w, grid=(h, w))
            for h, w in grids]


def config(family: str, tiny: bool = False, text_layers: int | None = None):
    """The HF config of `family` (sdpa attention); `text_layers` overrides the decoder depth
    (vision-only builds use 1 layer to save time and memory)."""
    import transformers as tf

    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    text = dict(_TINY_TEXT if tiny else _QWEN2_7B)
    if text_layers is not None:
        text["num_hidden_layers"] = int(text_layers)
    if family == "llava_onevision":
        text.update(model_type="qwen2", vocab_size=320 if tiny else 152128,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        vision = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                      num_hidden_layers=26, num_attention_heads=16, image_size=384, patch_size=14,
                      hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False)
        if tiny:
            vision.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          image_size=56)
        # tiny: anyres pinpoints in multiples of the 56 px crop (the default ones are 384 px multiples)
        ids = dict(image_token_index=300, video_token_index=301,
                   image_grid_pinpoints=[[56, 56], [56, 112], [112, 56], [112, 112]]) if tiny else {}
        return tf.LlavaOnevisionConfig(text_config=text, vision_config=vision, vision_feature_layer=-1,
                                       vision_feature_select_strategy="full", attn_implementation="sdpa", **ids)
    text.update(model_type="qwen2_vl_text", vocab_size=320 if tiny else 152064,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                 "mrope_section": [4, 6, 6] if tiny else [16, 24, 24]})
    vision = dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, hidden_act="quick_gelu")
    if tiny:
        vision.update(depth=2, embed_dim=64, hidden_size=128, num_heads=4, mlp_ratio=2)
    ids = dict(image_token_id=300, video_token_id=301, vision_start_token_id=302, vision_end_token_id=303) \
        if tiny else dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                          vision_end_token_id=151653)
    return tf.Qwen2VLConfig(text_config=text, vision_config=vision, attn_implementation="sdpa", **ids)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build(family: str, device: str, dtype: torch.dtype, tiny: bool = False, text_layers: int | None = None,
          seed: int = 0) -> nn.Module:
    """Random-weight model of `family`, created on `device` in `dtype`, eval mode."""
    import transformers as tf

    cls = {"llava_onevision": tf.LlavaOnevisionForConditionalGeneration,
           "qwen2_vl": tf.Qwen2VLForConditionalGeneration}[family]
    cfg = config(family, tiny, text_layers)
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        model = cls(cfg)
    return model.eval().requires_grad_(False)


@dataclass
class Parts:
    """The modules the timed steps call (located through the calibrator's adapter)."""

    decoder: nn.Module  # the text model: inputs_embeds -> last_hidden_state (final norm included)
    embed: nn.Module
    lm_head: nn.Module
    vision: nn.Module  # Qwen2-VL: model.visual (blocks + merger); LLaVA: the SigLIP tower
    projector: nn.Module | None  # LLaVA's multi_modal_projector (Qwen2-VL's merger is in `vision`)
    text_config: object


def parts(model: nn.Module) -> Parts:
    from modaq.calib import get_adapter

    adapter = get_adapter(model)
    layers_name, _ = adapter.language_blocks()
    decoder = model.get_submodule(layers_name.rsplit(".layers", 1)[0])
    blocks_name, _ = adapter.vision_blocks()
    proj_name, proj = adapter.projector()
    if model.config.model_type == "qwen2_vl":
        vision, projector = model.get_submodule(blocks_name.rsplit(".blocks", 1)[0]), None
    else:
        tower = blocks_name.split(".vision_model.encoder")[0].split(".encoder")[0]  # the SigLIP / CLIP model
        vision, projector = model.get_submodule(tower), proj
    return Parts(decoder, model.get_input_embeddings(), model.get_output_embeddings(), vision, projector,
                 model.config.get_text_config())


def linear_weight_bytes(module: nn.Module) -> int:
    """Bytes of the weights of every Linear / modaq module under `module`: nn.Linear weight +
    bias; modaq modules all their buffers (packed weights, scales, zeros, bias, rotation)."""
    from modaq.nn import QuantLinear

    total = 0
    for m in module.modules():
        if isinstance(m, QuantLinear):
            total += sum(b.numel() * b.element_size() for b in m.buffers(recurse=False))
        elif isinstance(m, nn.Linear):
            total += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
    return total


class NoLinear(nn.Module):
    """Stand-in for a Linear that reads no weights and does no math: returns zeros of the output
    shape (one small memset launch).  A decoder built of these times everything but the Linears,
    the floor that no weight format can go below."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


def strip_linears(module: nn.Module) -> int:
    """Replace every nn.Linear under `module` by a NoLinear; returns how many."""
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    for name in names:
        parent, _, child = name.rpartition(".")
        lin = module.get_submodule(name)
        setattr(module.get_submodule(parent) if parent else module, child, NoLinear(lin.in_features, lin.out_features))
    return len(names)
