"""Calibration data: (image, prompt, answer) triples -> processor inputs in the model's chat template.

Sources (the `spec` strings of `load_calibration` and `modaq quantize --calib`):

    synthetic[:N]                 images drawn in code with captions (offline demo, tests)
    coco:ANNOTATIONS,IMAGE_DIR    COCO captions annotation JSON (images / annotations lists)
    sharegpt4v:JSON,IMAGE_DIR     ShareGPT4V-style list of {image, conversations: [human, gpt, ...]}
    jsonl:FILE[,IMAGE_DIR]        one {"image": path, "text": answer, "prompt"?: question} per line

Each sample is a user turn (image + prompt) and an assistant turn (the caption / answer), rendered
by `processor.apply_chat_template`; labels are the input ids with everything before the answer
set to -100, so the SFT (caption) loss of MBQ's sensitivity pass covers only the answer tokens.
MBQ samples 128 image-caption pairs (the paper's default, `DEFAULT_SAMPLES`).
"""
from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from typing import Callable

import torch

DEFAULT_SAMPLES = 128
DEFAULT_PROMPT = "Describe this image ."


@dataclass
class CalibSample:
    """One calibration example: processor outputs (batch 1) and SFT labels [1, S] (-100 = ignored)."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]


@dataclass
class Pair:
    """An image (or a callable loading it) with its prompt and answer text."""

    image: object
    answer: str
    prompt: str = DEFAULT_PROMPT

    def load_image(self):
        from PIL import Image

        img = self.image() if callable(self.image) else self.image
        if not isinstance(img, Image.Image):
            raise TypeError(f"image: expected a PIL image, got {type(img).__name__}")
        return img.convert("RGB")


# ------------------------------------------------------------------------- sources

_COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
           "white": (245, 245, 245), "black": (15, 15, 15), "orange": (240, 140, 30), "purple": (140, 50, 170)}
_SHAPES = ("circle", "square", "triangle")


def synthetic_pairs(n: int, seed: int = 0, min_size: int = 56, max_size: int = 224) -> list[Pair]:
    """`n` images of colored shapes on a colored background with matching captions."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    pairs = []
    names = list(_COLORS)
    for _ in range(n):
        w, h = rng.randint(min_size, max_size), rng.randint(min_size, max_size)
        bg, fg = rng.sample(names, 2)
        img = Image.new("RGB", (w, h), _COLORS[bg])
        draw = ImageDraw.Draw(img)
        count = rng.randint(1, 3)
        shape = rng.choice(_SHAPES)
        for _ in range(count):
            r = rng.randint(6, min(w, h) // 3)
            cx, cy = rng.randint(r, w - r), rng.randint(r, h - r)
            box = (cx - r, cy - r, cx + r, cy + r)
            if shape == "circle":
                draw.ellipse(box, fill=_COLORS[fg])
            elif shape == "square":
                draw.rectangle(box, fill=_COLORS[fg])
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=_COLORS[fg])
        size = "small" if min(w, h) < 80 else "large"
        what = f"a {fg} {shape}" if count == 1 else f"{['two', 'three'][count - 2]} {fg} {shape}s"
        pairs.append(Pair(img, f"a {size} picture of {what} on a {bg} background ."))
    return pairs


def read_json(path: str, what: str):
    """Parsed JSON file; errors name `what` and the path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: {path} is not valid JSON ({e})") from None


def _image_loader(path: str) -> Callable:
    def load():
        from PIL import Image, UnidentifiedImageError

        if not os.path.isfile(path):
            raise FileNotFoundError(f"image: file not found: {path}")
        try:
            return Image.open(path)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"image: cannot read {path} as an image ({e})") from None
    return load


def _check_dir(image_dir: str) -> None:
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image_dir: directory not found: {image_dir}")


def coco_pairs(annotations: str, image_dir: str) -> list[Pair]:
    """COCO captions: {"images": [{id, file_name}], "annotations": [{image_id, caption}]};
    the first caption of each image."""
    data = read_json(annotations, "annotations")
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"annotations: {annotations} must be a COCO captions JSON with 'images' and 'annotations'")
    _check_dir(image_dir)
    files = {img["id"]: img["file_name"] for img in data["images"]}
    captions: dict = {}
    for ann in data["annotations"]:
        if ann.get("image_id") in files and "caption" in ann:
            captions.setdefault(ann["image_id"], ann["caption"].strip())
    return [Pair(_image_loader(os.path.join(image_dir, files[i])), c) for i, c in sorted(captions.items())]


def sharegpt4v_pairs(path: str, image_dir: str) -> list[Pair]:
    """ShareGPT4V: [{"image": rel_path, "conversations": [{"from": "human", "value": "<image>\\n..."},
    {"from": "gpt", "value": caption}, ...]}]; the first human / gpt exchange of each entry."""
    data = read_json(path, "sharegpt4v")
    if not isinstance(data, list):
        raise ValueError(f"sharegpt4v: {path} must hold a JSON list of conversations")
    _check_dir(image_dir)
    pairs = []
    for i, entry in enumerate(data):
        conv = entry.get("conversations") if isinstance(entry, dict) else None
        if not entry.get("image") or not conv or len(conv) < 2:
            raise ValueError(f"sharegpt4v: entry {i} of {path} needs 'image' and two 'conversations' turns")
        prompt = conv[0]["value"].replace("<image>", "").strip() or DEFAULT_PROMPT
        pairs.append(Pair(_image_loader(os.path.join(image_dir, entry["image"])), conv[1]["value"].strip(), prompt))
    return pairs


def jsonl_pairs(path: str, image_dir: str | None = None) -> list[Pair]:
    """One JSON object per line: {"image": path, "text": answer, "prompt": optional question};
    relative image paths resolve against `image_dir` (default: the file's directory)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"jsonl: file not found: {path}")
    root = image_dir or os.path.dirname(os.path.abspath(path))
    _check_dir(root)
    pairs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"jsonl: {path} line {lineno} is not valid JSON ({e})") from None
            if not isinstance(row, dict) or "image" not in row or "text" not in row:
                raise ValueError(f"jsonl: {path} line {lineno} needs keys 'image' and 'text'")
            pairs.append(Pair(_image_loader(os.path.join(root, row["image"])), row["text"],
                              row.get("prompt", DEFAULT_PROMPT)))
    return pairs


def parse_spec(spec: str, n: int, seed: int = 0) -> list[Pair]:
    """Pairs for a source spec (see module docstring), `n` of them drawn with `seed`."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"calib: expected a source spec like 'synthetic' or 'coco:ANN,IMAGES', got {spec!r}")
    kind, _, rest = spec.partition(":")
    args = [a for a in rest.split(",") if a] if rest else []
    if kind == "synthetic":
        return synthetic_pairs(int(args[0]) if args else n, seed)
    readers = {"coco": (coco_pairs, 2), "sharegpt4v": (sharegpt4v_pairs, 2), "jsonl": (jsonl_pairs, 1)}
    if kind not in readers:
        raise ValueError(f"calib: unknown source {kind!r}; expected synthetic, coco, sharegpt4v or jsonl")
    reader, required = readers[kind]
    if len(args) < required or len(args) > 2:
        want = "FILE,IMAGE_DIR" if required == 2 else "FILE[,IMAGE_DIR]"
        raise ValueError(f"calib: {kind} expects {want}, got {rest!r}")
    pairs = reader(*args)
    if not pairs:
        raise ValueError(f"calib: {spec} holds no usable samples")
    if len(pairs) > n:
        pairs = random.Random(seed).sample(pairs, n)
    return pairs


# ------------------------------------------------------------------- to model inputs

def _messages(pair: Pair) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": pair.prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": pair.answer}]}]


def _count(inputs, token_id: int) -> int:
    return int((inputs["input_ids"] == token_id).sum())


def fit_visual_budget(processor, text: str, image, budget: int, image_token_id: int):
    """(processor inputs, image) with `image` downscaled until it yields at most `budget` visual
    tokens (aspect ratio kept; each step aims at the budget from the current count)."""
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    count = _count(inputs, image_token_id)
    for _ in range(12):
        if count <= budget:
            return inputs, image
        factor = min(0.9, math.sqrt(budget / count) * 0.98)
        size = (max(1, int(image.size[0] * factor)), max(1, int(image.size[1] * factor)))
        smaller = image.resize(size)
        smaller_inputs = processor(text=[text], images=[smaller], return_tensors="pt")
        smaller_count = _count(smaller_inputs, image_token_id)
        if smaller_count >= count or min(size) < 8:
            raise ValueError(f"visual_token_budget: {budget} is below the {count} visual tokens this processor "
                             "makes per image even when the image shrinks (fixed-resolution model?)")
        image, inputs, count = smaller, smaller_inputs, smaller_count
    raise ValueError(f"visual_token_budget: could not reach {budget} visual tokens (still {count})")


def build_samples(pairs: list[Pair], processor, *, visual_token_budget: int | None = None,
                  image_token_id: int | None = None) -> list[CalibSample]:
    """Render each pair with the processor's chat template; labels cover the answer only."""
    if not hasattr(processor, "apply_chat_template") or getattr(processor, "chat_template", None) is None:
        raise ValueError("processor: needs a chat template (processor.chat_template is None)")
    token_id = image_token_id if image_token_id is not None else getattr(processor, "image_token_id", None)
    if visual_token_budget is not None:
        if not isinstance(visual_token_budget, int) or visual_token_budget <= 0:
            raise ValueError(f"visual_token_budget: expected a positive int, got {visual_token_budget!r}")
        if token_id is None:
            raise ValueError("image_token_id: needed for visual_token_budget (the processor names none)")
    samples = []
    for pair in pairs:
        image = pair.load_image()
        msgs = _messages(pair)
        full = processor.apply_chat_template(msgs, tokenize=False)
        prompt = processor.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
        if visual_token_budget is not None:
            inputs, image = fit_visual_budget(processor, full, image, visual_token_budget, token_id)
        else:
            inputs = processor(text=[full], images=[image], return_tensors="pt")
        prompt_ids = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0]
        ids = inputs["input_ids"][0]
        n = min(len(ids), len(prompt_ids))
        diff = (ids[:n] != prompt_ids[:n]).nonzero()
        start = int(diff[0]) if len(diff) else n  # the answer starts where the two renderings part
        labels = ids.clone()[None]
        labels[:, :start] = -100
        pad = getattr(getattr(processor, "tokenizer", None), "pad_token_id", None)
        if pad is not None:
            labels[labels == pad] = -100
        samples.append(CalibSample(dict(inputs), labels))
    return samples


def load_calibration(spec: str, processor, n: int = DEFAULT_SAMPLES, *, visual_token_budget: int | None = None,
                     image_token_id: int | None = None, seed: int = 0) -> list[CalibSample]:
    """`n` calibration samples from `spec` (see module docstring) in the processor's chat template."""
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"samples: expected a positive int, got {n!r}")
    pairs = parse_spec(spec, n, seed)
    return build_samples(pairs, processor, visual_token_budget=visual_token_budget, image_token_id=image_token_id)
