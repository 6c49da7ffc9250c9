"""The benchmark VLM: a tiny LLaVA (CLIP vision tower + 2-layer GELU projector + Qwen2 decoder),
its word-level tokenizer and its LlavaProcessor, all built in code from a preset.

Prompt format (also the processor's chat template, so calibrators can use apply_chat_template):

    "<image> {question} answer :"            then the target " {answer} <eos>"

The processor expands "<image>" into one placeholder per ViT patch (CLS dropped), so a sample
carries (image_size / patch_size)^2 vision tokens and 6-18 text tokens. All Linear in/out
features are multiples of 64 (the K dims multiples of 128) so every modaq format applies.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast,
                          Qwen2Config)

from .data import SceneConfig, VQASample, vocabulary

IMAGE_TOKEN, PAD_TOKEN, UNK_TOKEN, EOS_TOKEN = "<image>", "<pad>", "<unk>", "<eos>"
PROMPT_TEMPLATE = IMAGE_TOKEN + " {question} answer :"
# Renders the same prompt from chat messages: user turn = image + question; assistant turn = answer.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% if m['content'] is string %}{{ m['content'] }} {% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image> {% elif c['type'] == 'text' %}{{ c['text'] }} {% endif %}"
    "{% endfor %}{% endif %}answer :"
    "{% else %}{% if m['content'] is string %} {{ m['content'] }}{% else %}"
    "{% for c in m['content'] %} {{ c['text'] }}{% endfor %}{% endif %} <eos>{% endif %}{% endfor %}"
)
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)
VOCAB_PAD_TO = 128  # embedding / lm_head rows rounded up (unused rows are never targets)


@dataclass(frozen=True)
class VLMPreset:
    """Data geometry + architecture of one model size."""

    name: str
    scene: SceneConfig
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    mlp_ratio: int = 4
    init_std: float = 0.02  # initializer_range of both towers

    @property
    def patch_size(self) -> int:
        return self.scene.cell  # one ViT patch per board cell

    @property
    def num_image_tokens(self) -> int:
        return self.scene.grid ** 2


PRESETS = {
    # 48x48 images, 8x8 patches -> 36 vision tokens; ~1.4 M parameters.
    "cpu": VLMPreset("cpu", SceneConfig(grid=6, cell=8, min_objects=1, max_objects=4),
                     vision_hidden=128, vision_layers=2, vision_heads=4,
                     text_hidden=128, text_layers=3, text_heads=8, text_kv_heads=8),
    # 96x96 images, 8x8 patches -> 144 vision tokens; ~6.9 M parameters (GQA in the decoder).
    "h100": VLMPreset("h100", SceneConfig(grid=12, cell=8, min_objects=1, max_objects=6),
                      vision_hidden=256, vision_layers=4, vision_heads=4,
                      text_hidden=256, text_layers=4, text_heads=4, text_kv_heads=2),
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the generator's vocabulary; digits split one per token."""
    specials = [PAD_TOKEN, UNK_TOKEN, EOS_TOKEN, IMAGE_TOKEN]
    vocab = {tok: i for i, tok in enumerate(specials + vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    core.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN,
                                   eos_token=EOS_TOKEN, extra_special_tokens={"image_token": IMAGE_TOKEN},
                                   padding_side="left", model_max_length=512)


def build_processor(preset: VLMPreset, tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    """LlavaProcessor whose CLIP image processor maps a (S, S) RGB image to [-1, 1] unchanged in size."""
    side = preset.scene.image_size
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side},
        image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD), do_convert_rgb=True)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=preset.patch_size, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """(grid*grid, dim) fixed 2-D sin-cos position code, row-major: half the channels encode the
    row, half the column, each as sin/cos at geometric frequencies. Starting the ViT's learned
    position table here gives it left/right/above/below structure from step 0."""
    if dim % 4:
        raise ValueError(f"dim: expected a multiple of 4, got {dim}")
    freqs = 1.0 / 100.0 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    pos = torch.arange(grid, dtype=torch.float64)[:, None] * freqs[None]  # (grid, dim/4)
    code = torch.cat([pos.sin(), pos.cos()], dim=1)  # (grid, dim/2)
    rows = code[:, None, :].expand(grid, grid, dim // 2)
    cols = code[None, :, :].expand(grid, grid, dim // 2)
    return torch.cat([rows, cols], dim=2).reshape(grid * grid, dim).float()


def build_model(preset: VLMPreset, tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    """Randomly initialised LLaVA of `preset` (call torch.manual_seed first for determinism)."""
    vocab_size = -(-len(tokenizer) // VOCAB_PAD_TO) * VOCAB_PAD_TO
    vision = CLIPVisionConfig(
        hidden_size=preset.vision_hidden, intermediate_size=preset.mlp_ratio * preset.vision_hidden,
        num_hidden_layers=preset.vision_layers, num_attention_heads=preset.vision_heads,
        image_size=preset.scene.image_size, patch_size=preset.patch_size, hidden_act="gelu",
        initializer_range=preset.init_std)
    text = Qwen2Config(
        vocab_size=vocab_size, hidden_size=preset.text_hidden,
        intermediate_size=preset.mlp_ratio * preset.text_hidden,
        num_hidden_layers=preset.text_layers, num_attention_heads=preset.text_heads,
        num_key_value_heads=preset.text_kv_heads, max_position_embeddings=512,
        initializer_range=preset.init_std,
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_seq_length=preset.num_image_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=False)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():  # 2-D sin-cos patch positions (row, col), as MAE; CLS row stays zero
        table = model.model.vision_tower.embeddings.position_embedding.weight
        table.zero_()
        # scaled to the std of the random init it replaces, so patch content is not drowned out
        table[1:] = sincos_2d(preset.scene.grid, preset.vision_hidden) * preset.init_std * 2 ** 0.5
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def pixel_values(images: list[np.ndarray]) -> torch.Tensor:
    """(B, 3, S, S) float32 in [-1, 1] from (S, S, 3) uint8 images; equals what the processor
    gives (tested), without PIL, for fast training batches."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


def training_batch(dialogues: list[list[VQASample]], tokenizer: PreTrainedTokenizerFast,
                   num_image_tokens: int, loss_on_questions: bool = False) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / labels / pixel_values for teacher forcing, right-padded.
    Each dialogue (samples sharing one image) becomes one sequence, as the chat template renders
    it: "<image>*N q1 answer : a1 <eos> q2 answer : a2 <eos> ...". Labels are -100 on image
    tokens and padding; on the question tokens too unless `loss_on_questions` (predicting "the
    red ___" -> "circle" is grounding supervision: it trains colour -> shape look-ups)."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    rows, label_rows = [], []
    for dialogue in dialogues:
        ids, labels = [image_id] * num_image_tokens, [-100] * num_image_tokens
        for s in dialogue:
            prompt = tokenizer.encode(PROMPT_TEMPLATE.format(question=s.question).replace(IMAGE_TOKEN, ""),
                                      add_special_tokens=False)
            target = tokenizer.encode(s.answer, add_special_tokens=False) + [tokenizer.eos_token_id]
            ids += prompt + target
            labels += (prompt if loss_on_questions else [-100] * len(prompt)) + target
        rows.append(ids)
        label_rows.append(labels)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([r + [-100] * (width - len(r)) for r in label_rows]),
        "pixel_values": pixel_values([d[0].image for d in dialogues]),
    }
