"""Processors (tokenizer + image processor + chat template) built in code for the random-weight
models of benchmarks/e2e/models.py, matching each config without a download.

The tokenizer is a WordLevel one over the words of the synthetic calibration set (modaq.calib.
tiny.WORDS) whose special tokens take the ids the config names (image / video / vision start /
end); the ChatML tokens take Qwen2's real ids (151643-151645) where the vocabulary holds them,
else the highest free ids.  The image processors are the families' own, with the config's patch,
merge and crop sizes:

    qwen2_vl          Qwen2VLImageProcessor: patch 14, temporal patch 2, merge 2 (from the vision config)
    llava_onevision   LlavaOnevisionImageProcessor: crops of the tower's image_size, the config's
                      anyres grid pinpoints; the processor's tokens per crop = (image_size / patch)^2
"""
from __future__ import annotations

from modaq.calib import tiny

_QWEN2_CHATML = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}


def _tokenizer(config_ids: dict[str, int], vocab_size: int):
    """WordLevel tokenizer: words from id 2, specials at `config_ids` or the ChatML ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = dict(config_ids)
    used = set(specials.values())
    free = (i for i in range(vocab_size - 1, -1, -1) if i not in used)
    for tok, real in _QWEN2_CHATML.items():
        specials[tok] = real if real < vocab_size and real not in used else next(free)
        used.add(specials[tok])
    words = [w for w in tiny.WORDS if w not in specials]
    vocab = {"[UNK]": 0, "[PAD]": 1}
    ids = (i for i in range(2, vocab_size) if i not in used)
    vocab.update({w: next(ids) for w in words})
    vocab.update(specials)
    if max(vocab.values()) >= vocab_size:
        raise ValueError(f"vocab_size: {vocab_size} is too small for {len(vocab)} tokens")
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(["[UNK]", "[PAD]", *specials])  # matched whole, before pre-tokenization
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="<|im_end|>")


def _qwen2_vl(config):
    import transformers as tf

    v = config.vision_config
    ids = {"<|vision_start|>": config.vision_start_token_id, "<|vision_end|>": config.vision_end_token_id,
           "<|image_pad|>": config.image_token_id, "<|video_pad|>": config.video_token_id}
    tok = _tokenizer(ids, config.get_text_config().vocab_size)
    image_proc = tiny._image_processor("qwen2_vl", "Qwen2VLImageProcessor", patch_size=v.patch_size,
                                       temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size)
    template = tiny._chatml_template("<|vision_start|><|image_pad|><|vision_end|>")
    return tiny._processor_class(tf.Qwen2VLProcessor)(image_processor=image_proc, tokenizer=tok,
                                                      chat_template=template)


def _llava_onevision(config):
    import transformers as tf

    v = config.vision_config
    ids = {"<image>": config.image_token_id, "<video>": config.video_token_id}
    tok = _tokenizer(ids, config.get_text_config().vocab_size)
    image_proc = tiny._image_processor("llava_onevision", "LlavaOnevisionImageProcessor",
                                       size={"height": v.image_size, "width": v.image_size},
                                       image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints])
    return tiny._processor_class(tf.LlavaOnevisionProcessor)(
        image_processor=image_proc, tokenizer=tok, num_image_tokens=(v.image_size // v.patch_size) ** 2,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=tiny._chatml_template("<image>\n"))


_BUILDERS = {"qwen2_vl": _qwen2_vl, "llava_onevision": _llava_onevision}


def processor_for(config):
    """The processor of a benchmarks/e2e/models.py model config (model_type qwen2_vl or llava_onevision)."""
    kind = config.model_type
    if kind not in _BUILDERS:
        raise ValueError(f"config: expected model_type in {sorted(_BUILDERS)}, got {kind!r}")
    return _BUILDERS[kind](config)
