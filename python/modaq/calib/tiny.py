"""Tiny random-weight VLMs of every supported family, with processors built in code (no download).

`tiny_vlm(family)` returns (model, processor): a 2-layer vision tower, a projector and a 2-layer
decoder (hidden 128, so weight groups of 128 fit), a WordLevel tokenizer over the words the
synthetic calibration set uses, and the family's own image processor and processor class
constructed from arguments.  Used by the tests and by `modaq demo`.

`plant_outliers(model)` makes the random model look like a trained VLM where it matters for
quantization: a few activation channels 20-50x larger than the rest at every norm (the outlier
channels that equalization methods exist for) and vision tokens entering the decoder at a much
larger magnitude than text tokens, with outlier channels of their own (the modality gap of the
modality-aware rotation paper, fig. 1).
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava_onevision", "internvl")
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, LAYERS = 128, 256, 4, 2, 2
VOCAB = 320
IMAGE = 56  # pixels; patch 14 -> 4 x 4 patches

# Every word the synthetic set and the chat templates produce; the rest map to [UNK].
WORDS = ("a an the of on in with and is are this image photo picture describe Describe what shows there "
         "red green blue yellow white black orange purple small large big tiny circle square triangle "
         "circles squares triangles stripe stripes dot dots background top bottom left right center corner "
         "one two three shape shapes colored bright dark near next to above below user assistant system "
         "USER ASSISTANT you helpful . , : ? ! ' -").split()


def _chatml_template(image: str) -> str:
    """Qwen / InternVL style ChatML; `image` is what one image item expands to."""
    return ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
            "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
            "{% for c in message['content'] %}{% if c['type'] == 'image' %}" + image +
            "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


_LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% else %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}")

_CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_SPECIALS = {
    "qwen2_vl": _CHATML_SPECIALS + ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "llava": ["<s>", "</s>", "<image>", "<video>"],
    "internvl": _CHATML_SPECIALS + ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
}
_SPECIALS["qwen2_5_vl"] = _SPECIALS["qwen2_vl"]
_SPECIALS["llava_onevision"] = _CHATML_SPECIALS + ["<image>", "<video>"]


def _tokenizer(family: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = _SPECIALS[family]
    vocab = {tok: i for i, tok in enumerate(["[UNK]", "[PAD]", *specials, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(["[UNK]", "[PAD]", *specials])  # matched whole, before pre-tokenization
    eos = "</s>" if family == "llava" else "<|im_end|>"
    extra = {}
    if family == "internvl":
        extra = {"start_image_token": "<img>", "end_image_token": "</img>",
                 "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token=eos,
                                  extra_special_tokens=extra)
    return tok, {t: vocab[t] for t in specials}


def _image_processor(module: str, name: str, **kwargs):
    """The PIL-backed image processor (no torchvision needed) when this transformers has one."""
    mod = importlib.import_module(f"transformers.models.{module}")
    cls = getattr(mod, f"{name}Pil", None) or getattr(mod, name)
    return cls(**kwargs)


def _processor_class(cls):
    """`cls`, or where this transformers lacks torchvision-backed video processors (the
    processor then cannot take video_processor=None), a same-named subclass without the video
    sub-processor (images and text only, which is all calibration uses)."""
    import transformers

    if hasattr(transformers, "VideoProcessorMixin") or "video_processor" not in cls.get_attributes():
        return cls

    def get_attributes(klass):
        return [a for a in cls.get_attributes() if a != "video_processor"]

    return type(cls.__name__, (cls,), {"get_attributes": classmethod(get_attributes), "__module__": cls.__module__})


def _text_config(model_type: str, ids: dict, **extra) -> dict:
    return dict(model_type=model_type, vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=ids["intermediate"],
                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                max_position_embeddings=512, bos_token_id=ids["eos"],
                eos_token_id=ids["eos"], pad_token_id=ids["pad"], **extra)


def _qwen2_vl(family: str, ids: dict):
    import transformers as tf

    rope = {"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0}
    text = _text_config(f"{family}_text", ids, rope_parameters=rope)
    common = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if family == "qwen2_vl":
        vision = dict(depth=LAYERS, embed_dim=HIDDEN, hidden_size=HIDDEN, num_heads=HEADS, mlp_ratio=2)
        config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **common)
        model_cls, proc_cls = tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor
    else:
        vision = dict(depth=LAYERS, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, out_hidden_size=HIDDEN,
                      num_heads=HEADS, fullatt_block_indexes=[1], window_size=56)
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
        model_cls, proc_cls = tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor
    image_proc = _image_processor("qwen2_vl", "Qwen2VLImageProcessor", min_pixels=IMAGE * IMAGE,
                                  max_pixels=16 * IMAGE * IMAGE)
    template = _chatml_template("<|vision_start|><|image_pad|><|vision_end|>")
    return config, model_cls, lambda tok: _processor_class(proc_cls)(image_processor=image_proc, tokenizer=tok,
                                                                      chat_template=template)


def _llava(family: str, ids: dict):
    import transformers as tf

    vision = dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, image_size=IMAGE, patch_size=14)
    if family == "llava":
        config = tf.LlavaConfig(text_config=_text_config("llama", ids),
                                vision_config=dict(vision, model_type="clip_vision_model"),
                                image_token_id=ids["<image>"], vision_feature_layer=-2)
        image_proc = _image_processor("clip", "CLIPImageProcessor", size={"shortest_edge": IMAGE},
                                      crop_size={"height": IMAGE, "width": IMAGE})
        return config, tf.LlavaForConditionalGeneration, lambda tok: tf.LlavaProcessor(
            image_processor=image_proc, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
            num_additional_image_tokens=1, chat_template=_LLAVA_TEMPLATE)
    pinpoints = [[IMAGE, IMAGE], [IMAGE, 2 * IMAGE], [2 * IMAGE, IMAGE], [2 * IMAGE, 2 * IMAGE]]
    config = tf.LlavaOnevisionConfig(text_config=_text_config("qwen2", ids),
                                     vision_config=dict(vision, model_type="siglip_vision_model"),
                                     image_token_id=ids["<image>"], video_token_id=ids["<video>"],
                                     vision_feature_layer=-1, image_grid_pinpoints=pinpoints)
    image_proc = _image_processor("llava_onevision", "LlavaOnevisionImageProcessor",
                                  size={"height": IMAGE, "width": IMAGE},
                                  image_grid_pinpoints=pinpoints)
    return config, tf.LlavaOnevisionForConditionalGeneration, lambda tok: _processor_class(tf.LlavaOnevisionProcessor)(
        image_processor=image_proc, tokenizer=tok, num_image_tokens=(IMAGE // 14) ** 2,
        vision_feature_select_strategy="full", chat_template=_chatml_template("<image>\n"))


def _internvl(family: str, ids: dict):
    import transformers as tf

    vision = dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, image_size=[IMAGE, IMAGE], patch_size=[14, 14])
    config = tf.InternVLConfig(text_config=_text_config("qwen2", ids), vision_config=vision,
                               image_token_id=ids["<IMG_CONTEXT>"])
    image_proc = _image_processor("got_ocr2", "GotOcr2ImageProcessor", size={"height": IMAGE, "width": IMAGE},
                                  crop_to_patches=False)
    seq = (IMAGE // 14) ** 2 // 4  # pixel shuffle with scale factor 0.5
    return config, tf.InternVLForConditionalGeneration, lambda tok: _processor_class(tf.InternVLProcessor)(
        image_processor=image_proc, tokenizer=tok, image_seq_length=seq,
        chat_template=_chatml_template("<IMG_CONTEXT>\n"))


_BUILDERS = {"qwen2_vl": _qwen2_vl, "qwen2_5_vl": _qwen2_vl, "llava": _llava, "llava_onevision": _llava,
             "internvl": _internvl}


def tiny_vlm(family: str = "qwen2_vl", seed: int = 0, dtype: torch.dtype = torch.float32,
             outliers: bool = False, text_intermediate_size: int = INTERMEDIATE):
    """(model, processor) of a tiny random-weight VLM of `family` (one of FAMILIES), eval mode.
    `text_intermediate_size` sets the decoder MLP width (e.g. 192 to get a down_proj whose
    K is not a multiple of the weight group size)."""
    if family not in _BUILDERS:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    tok, ids = _tokenizer(family)
    ids = dict(ids, eos=tok.eos_token_id, pad=tok.pad_token_id, intermediate=text_intermediate_size)
    config, model_cls, make_processor = _BUILDERS[family](family, ids)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config).to(dtype).eval()
        if outliers:
            plant_outliers(model, seed=seed)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
    return model, make_processor(tok)


@torch.no_grad()
def plant_outliers(model: nn.Module, seed: int = 0, channels: int = 4, scale: float = 30.0,
                   vision_gain: float = 20.0, vision_channel_gain: float = 10.0) -> None:
    """Make a random model quantize like a trained VLM (changes its function; that is the point):

    - `channels` random channels of every norm's weight scaled by ~`scale`: outlier activation
      channels after each norm, shared by all tokens;
    - the projector's last Linear scaled by `vision_gain`, and `channels` of its output channels by
      another `vision_channel_gain`: vision tokens enter the decoder much louder than text, with
      outlier channels of their own, so vision and text prefer different equalization scales.
    """
    from .adapters import get_adapter

    adapter = get_adapter(model)
    gen = torch.Generator().manual_seed(seed + 1)
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if "norm" in type(mod).__name__.lower() and isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() >= 64:
            idx = torch.randperm(w.numel(), generator=gen)[:channels]
            gains = scale * (0.6 + 0.8 * torch.rand(channels, generator=gen))
            w[idx] *= gains.to(w.dtype)
    _, proj = adapter.projector()
    last = [m for m in proj.modules() if isinstance(m, nn.Linear)][-1]
    gain = torch.full((last.out_features,), vision_gain)
    gain[torch.randperm(last.out_features, generator=gen)[:channels]] *= vision_channel_gain
    last.weight.mul_(gain[:, None].to(last.weight.dtype))
    if last.bias is not None:
        last.bias.mul_(gain.to(last.bias.dtype))
