"""Greedy-decoding exact-match evaluation of a VLM on VQA samples, per task type.

Works on any LLaVA-style model object that `generate`s from (input_ids, attention_mask,
pixel_values), FP or quantized: it only calls the processor and `model.generate`.
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch
from PIL import Image

from .data import VQASample
from .model import PROMPT_TEMPLATE

TEST_SEED = 1234  # the benchmark's test split is generate_samples("test", n, TEST_SEED, scene)


def normalize_answer(text: str) -> str:
    """Exact-match key: lower case, all whitespace removed (the tokenizer splits digits, so a
    decoded "4 0 7" and the reference "407" are the same answer)."""
    return "".join(text.lower().split())


@torch.no_grad()
def predict(model, processor, samples: list[VQASample], batch_size: int = 64,
            max_new_tokens: int = 5) -> list[str]:
    """Greedy answers (decoded strings, special tokens dropped) for `samples`."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    device = next(model.parameters()).device
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    processor.tokenizer.padding_side = "left"  # generation appends on the right
    answers = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        inputs = processor(images=[Image.fromarray(s.image) for s in chunk],
                           text=[PROMPT_TEMPLATE.format(question=s.question) for s in chunk],
                           return_tensors="pt", padding=True)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=processor.tokenizer.pad_token_id)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        answers += processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return answers


def exact_match_by_task(samples: list[VQASample], predictions: list[str]) -> dict[str, dict]:
    """{task: {"correct", "total", "accuracy"}} plus an "all" row over every sample."""
    if len(samples) != len(predictions):
        raise ValueError(f"predictions: expected {len(samples)} items, got {len(predictions)}")
    correct, total = defaultdict(int), defaultdict(int)
    for sample, pred in zip(samples, predictions):
        hit = normalize_answer(pred) == normalize_answer(sample.answer)
        for key in (sample.task, "all"):
            correct[key] += hit
            total[key] += 1
    return {k: {"correct": correct[k], "total": total[k], "accuracy": correct[k] / total[k]}
            for k in sorted(total, key=lambda k: (k == "all", k))}


def evaluate(model, processor, samples: list[VQASample], batch_size: int = 64) -> dict:
    """Per-task exact match of `model` on `samples`, with the wall time it took."""
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    predictions = predict(model, processor, samples, batch_size=batch_size)
    seconds = time.perf_counter() - start
    model.train(was_training)
    return {"per_task": exact_match_by_task(samples, predictions), "seconds": seconds,
            "predictions": predictions}
