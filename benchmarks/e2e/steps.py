"""The timed step functions (zero-argument callables on static input buffers, so one CUDA graph
can replay them) and the checks that they compute what the Hugging Face model computes.

    vision_step    LLaVA-OneVision: SigLIP tower + projector on `crops` 384 px crops.
                   Qwen2-VL: patch embedding, the 32 blocks and the 2x2 merger, called with the
                   keyword arguments the HF forward passes its blocks (recorded once by a hook);
                   the rotary tables depend only on the grid, so they are computed once outside
                   the step, and cu_seqlens is handed over on the CPU: HF's non-flash attention
                   splits on cu_seqlens.tolist(), a host sync on a GPU tensor that breaks capture.
    prefill_step   decoder on [1, S] input embeddings writing a StaticCache of S tokens (reset
                   inside the step), final norm, lm_head on the last position.  A static cache of
                   exactly S tokens keeps HF on SDPA's is_causal path (no mask tensor), as in a
                   prefill without cache; without any cache HF would look for packed sequences
                   with a data-dependent .all() (a host sync).
    DecodeStep     one decode token for a batch: embedding, decoder with a StaticCache of
                   max_cache_len = context + steps, lm_head, argmax written back as the next input.
                   The cache advances its own device-side position (cumulative_length), so
                   replaying the captured step k times decodes k tokens; `rewind()` puts every
                   layer back at `context` between timed batches.  HF's static-cache attention
                   reads all max_cache_len positions under a mask, so the step costs what a
                   decode at `context` tokens of context costs.
"""
from __future__ import annotations

import torch
from torch import nn

from .models import Parts, VisionInput
from .timing import rel_err


def _static_cache(text_config, max_cache_len: int):
    from transformers import StaticCache

    return StaticCache(config=text_config, max_cache_len=max_cache_len)


def vision_step(p: Parts, family: str, vi: VisionInput, device: str, dtype: torch.dtype):
    """(step, checks): the vision stage on one image size; checks holds the relative error of the
    Qwen2-VL block loop against the HF forward."""
    cfg = p.vision.config
    if family == "llava_onevision":
        pixels = torch.randn(vi.crops, cfg.num_channels, cfg.image_size, cfg.image_size, device=device, dtype=dtype)

        def step():
            return p.projector(p.vision(pixel_values=pixels).last_hidden_state)
        return step, {}
    h, w = vi.grid
    pixels = torch.randn(h * w, cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2,
                         device=device, dtype=dtype)
    grid_thw = torch.tensor([[1, h, w]], device=device)
    block_kwargs = _recorded_block_kwargs(p.vision, pixels, grid_thw)
    visual = p.vision

    def step():
        hidden = visual.patch_embed(pixels)
        for block in visual.blocks:
            hidden = block(hidden, **block_kwargs)
        return visual.merger(hidden)

    with torch.no_grad():
        ref = visual(pixels, grid_thw=grid_thw)
        ref = ref.pooler_output if hasattr(ref, "pooler_output") else ref
        return step, {"vision_block_loop_vs_hf_rel_err": rel_err(step(), ref)}


def _recorded_block_kwargs(visual: nn.Module, pixels: torch.Tensor, grid_thw: torch.Tensor) -> dict:
    """The keyword arguments HF's vision forward passes its first block (cu_seqlens moved to the
    CPU: see the module docstring)."""
    seen = {}

    def hook(module, args, kwargs):
        if args[1:]:
            raise RuntimeError("vision block called with extra positional arguments; this benchmark "
                               "replays keyword arguments only (transformers version mismatch?)")
        seen.update(kwargs)

    handle = visual.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            visual(pixels, grid_thw=grid_thw)
    finally:
        handle.remove()
    seen.pop("hidden_states", None)
    if isinstance(seen.get("cu_seqlens"), torch.Tensor):
        seen["cu_seqlens"] = seen["cu_seqlens"].cpu()
    return seen


def prefill_step(p: Parts, seq: int, device: str, batch: int = 1, seed: int = 0):
    """Prefill of `seq` tokens (see module docstring); returns the last position's logits."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, p.text_config.vocab_size, (batch, seq), generator=gen).to(device)
    embeds = p.embed(ids)
    cache = _static_cache(p.text_config, seq)

    def step():
        cache.reset()
        hidden = p.decoder(inputs_embeds=embeds, past_key_values=cache, use_cache=True).last_hidden_state
        return p.lm_head(hidden[:, -1:])
    return step


class DecodeStep:
    """One greedy decode step for `batch` sequences at `context` tokens (module docstring)."""

    def __init__(self, p: Parts, batch: int, context: int, steps: int, device: str, seed: int = 0):
        self.p, self.context = p, context
        self.cache = _static_cache(p.text_config, context + steps)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.ids = torch.randint(0, p.text_config.vocab_size, (batch, 1), generator=gen).to(device)
        self.note = ""

    def __call__(self) -> torch.Tensor:
        hidden = self.p.decoder(inputs_embeds=self.p.embed(self.ids), past_key_values=self.cache,
                                use_cache=True).last_hidden_state
        logits = self.p.lm_head(hidden[:, -1])
        self.ids.copy_(logits.argmax(-1, keepdim=True))
        return logits

    def rewind(self) -> None:
        """Every cache layer back at `context` tokens (in place: the captured graph keeps its
        pointers).  Without a device-side length (another transformers), reset to 0 instead."""
        layers = getattr(self.cache, "layers", [])
        lengths = [getattr(layer, "cumulative_length", None) for layer in layers]
        if layers and all(isinstance(t, torch.Tensor) for t in lengths):
            for t in lengths:
                t.fill_(self.context)
        else:
            self.cache.reset()
            self.note = "cache reset to 0 tokens per timed batch (no device-side cache length)"


def check_decode(p: Parts, device: str, tokens: int = 6, batch: int = 2) -> float:
    """Relative error of DecodeStep's logits, fed the true next tokens one at a time from an
    empty cache, against one full causal forward over the same tokens."""
    gen = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(0, p.text_config.vocab_size, (batch, tokens), generator=gen).to(device)
    with torch.no_grad():
        full = p.lm_head(p.decoder(inputs_embeds=p.embed(ids)).last_hidden_state)
        step = DecodeStep(p, batch, 0, tokens, device)
        got = []
        for t in range(tokens):
            step.ids.copy_(ids[:, t:t + 1])
            got.append(step())
    return rel_err(torch.stack(got, dim=1), full)
