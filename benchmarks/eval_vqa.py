"""Exact-match accuracy per task type of a benchmark VLM on the procedural VQA test split.

    python benchmarks/eval_vqa.py --model benchmarks/checkpoints/vqa-cpu [--samples 1000]

Greedy decoding (`model.generate`, do_sample=False), answers compared after lower-casing and
removing whitespace. From Python, `evaluate_vqa(model, processor)` takes an already-loaded
model object (FP or quantized: anything LLaVA-like with `generate`), so quantized models are
scored by exactly the same code. Writes benchmarks/results/vqa_accuracy_<name>.json and .md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import transformers

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.vqa.data import SceneConfig, generate_samples  # noqa: E402
from benchmarks.vqa.evaluate import TEST_SEED, evaluate  # noqa: E402
from benchmarks.vqa.model import PRESETS, VLMPreset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def preset_for(model) -> VLMPreset:
    """The preset whose image geometry matches `model.config` (image size and patch size)."""
    vision = model.config.vision_config
    for preset in PRESETS.values():
        if (preset.scene.image_size, preset.patch_size) == (vision.image_size, vision.patch_size):
            return preset
    raise ValueError(f"model: no preset has image_size {vision.image_size} and patch_size "
                     f"{vision.patch_size}; known: {sorted(PRESETS)}")


def scene_for(model, model_dir: Path | None = None) -> SceneConfig:
    """The scene geometry `model` was trained on: train_summary.json's preset when `model_dir`
    holds one (written by train_vqa_vlm.py; also covers presets outside PRESETS), else the
    preset matching the model's image geometry."""
    summary = Path(model_dir) / "train_summary.json" if model_dir is not None else None
    if summary is not None and summary.is_file():
        scene = SceneConfig(**json.loads(summary.read_text())["preset"]["scene"])
        side = model.config.vision_config.image_size
        if scene.image_size != side:
            raise ValueError(f"model_dir: {summary} has image_size {scene.image_size}, the model's config {side}")
        return scene
    return preset_for(model).scene


def load(model_dir: Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, processor) saved by train_vqa_vlm.py, or a quantized copy saved by modaq
    (modaq.api.save_quantized / `modaq quantize`, kept in its saved dtype), in eval mode on `device`."""
    from modaq import api

    if not (Path(model_dir) / "config.json").is_file():
        raise ValueError(f"model_dir: {model_dir} has no config.json (train it with "
                         "benchmarks/train_vqa_vlm.py)")
    processor = transformers.AutoProcessor.from_pretrained(model_dir)
    if (Path(model_dir) / api.CONFIG_NAME).is_file():
        return api.load_quantized(model_dir, device).eval(), processor
    model = transformers.LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=dtype)
    return model.to(device).eval(), processor


def evaluate_vqa(model, processor, num_samples: int = 1000, seed: int = TEST_SEED,
                 batch_size: int = 64, preset: VLMPreset | None = None) -> dict:
    """Per-task exact match on `num_samples` test samples (balanced over the five tasks).
    Returns {"per_task": {task: {correct, total, accuracy}}, "seconds", "predictions"}."""
    preset = preset or preset_for(model)
    samples = generate_samples("test", num_samples, seed, preset.scene)
    return evaluate(model, processor, samples, batch_size=batch_size)


def write_results(name: str, model_label: str, result: dict, header: dict) -> str:
    """JSON + markdown table under benchmarks/results/; returns the markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = result["per_task"]
    payload = {**header, "model": model_label, "per_task": rows, "eval_seconds": result["seconds"]}
    (RESULTS / f"vqa_accuracy_{name}.json").write_text(json.dumps(payload, indent=1))
    lines = [f"# VQA exact match: {model_label}", "",
             f"{header['samples']} test samples (seed {header['seed']}), greedy decoding; "
             f"torch {header['torch']}, transformers {header['transformers']}, {header['device']}, "
             f"{header['date']}.", "", "| task | correct | total | exact match |", "|---|---|---|---|"]
    lines += [f"| {task} | {r['correct']} | {r['total']} | {100 * r['accuracy']:.1f}% |" for task, r in rows.items()]
    markdown = "\n".join(lines) + "\n"
    (RESULTS / f"vqa_accuracy_{name}.md").write_text(markdown)
    return markdown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(__file__).resolve().parent / "checkpoints" / "vqa-cpu")
    parser.add_argument("--name", help="result file suffix (default: model dir name minus 'vqa-', + '_fp')")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=TEST_SEED)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load(args.model, device)
    result = evaluate_vqa(model, processor, args.samples, args.seed, args.batch_size)
    header = {"samples": args.samples, "seed": args.seed, "torch": torch.__version__,
              "transformers": transformers.__version__, "date": datetime.date.today().isoformat(),
              "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    name = args.name or args.model.name.removeprefix("vqa-") + "_fp"
    print(write_results(name, str(args.model), result, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
