"""The modality-aware rotation paper's Table 2 ablation, measured with modaq's fidelity report.

    python benchmarks/rotation_ablation.py                      # tiny Qwen2-VL, CPU, ~4 min
    python benchmarks/rotation_ablation.py --model Qwen/Qwen2-VL-2B-Instruct --device cuda \\
        --calib coco:captions_train2017.json,train2017 --samples 128 --seeds 1

Three calibrations of the same method and formats (default: flatquant, vision W8A8 + language
W4A8, the paper's ablation setting), differing only in what the language decoder sees:

  text          the calibration captions without their images (the paper's "c4" row: text-only
                data; the vision tower and projector still calibrate on the images)
  mm-none       the image-caption samples, unweighted loss (the paper's "COCO, no weight")
  mm-weighted   the same samples, lambda_vis = beta * S_txt / S_vis (eq. 9-14; "COCO, yes")

For each, the fidelity report: mean relative block error of the decoder on text and vision
tokens (calibration inputs) and the KL divergence of next-token distributions on the text
positions of held-out image-caption samples against the FP model; medians over --seeds
calibration draws, with the ratio to the text-only row measured in the same run.  Writes
benchmarks/results/rotation_ablation_<model>.json and .md.  Accuracy (TextVQA-style) belongs to
the VQA benchmark (benchmarks/vqa/), which can run these configs through QuantConfig.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from modaq.calib import QuantConfig, calibrate, get_adapter, load_calibration  # noqa: E402
from modaq.calib.report import kl_text_positions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONDITIONS = {"text": dict(language_calibration="text", modality="none"),
              "mm-none": dict(modality="none"),
              "mm-weighted": dict(modality="scale_ratio")}


def _load(name: str):
    if name.startswith("tiny:"):
        from modaq.calib.tiny import tiny_vlm

        return tiny_vlm(name[5:], outliers=True)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(name, dtype="auto").eval(), AutoProcessor.from_pretrained(name)


def run_condition(fp_model, processor, args, condition: str, seed: int, held_out, masks) -> dict:
    cfg = QuantConfig(method=args.method, format=args.format, vision_format=args.vision_format, samples=args.samples,
                      beta=args.beta, flat_epochs=args.epochs, device=args.device, seed=seed, progress=False,
                      **CONDITIONS[condition])
    samples = load_calibration(args.calib, processor, args.samples, seed=seed,
                               image_token_id=get_adapter(fp_model).image_token_id)
    model = copy.deepcopy(fp_model)
    start = time.perf_counter()
    result = calibrate(model, samples, cfg)
    kl = kl_text_positions(fp_model, model, held_out, masks, cfg.torch_device())
    return {"lang_text": result.mean_block_error("language", "text"),
            "lang_vision": result.mean_block_error("language", "vision"),
            "vision": result.mean_block_error("vision", "vision"), "kl_text": kl,
            "seconds": time.perf_counter() - start}


def _median(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r[key] is not None]
    return statistics.median(vals) if vals else None


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3e}"


def table(summary: dict) -> str:
    base = summary["text"]["kl_text"]
    lines = ["| calibration | decoder text blk err | decoder vision blk err | vision blk err | KL text (held-out) "
             "| KL vs text-only |", "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {_fmt(s['lang_text'])} | {_fmt(s['lang_vision'])} | {_fmt(s['vision'])} | "
                     f"{_fmt(s['kl_text'])} | {s['kl_text'] / base:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny:qwen2_vl", help="tiny:FAMILY or a Hugging Face VLM id / path")
    p.add_argument("--method", default="flatquant", choices=["flatquant", "quarot", "gptq", "mbq", "awq"])
    p.add_argument("--format", default="w4a8")
    p.add_argument("--vision-format", default="w8a8")
    p.add_argument("--calib", default="synthetic")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--held-out", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3, help="calibration draws; the table gives medians")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fp_model, processor = _load(args.model)
    held_out = load_calibration(args.calib, processor, args.held_out, seed=10_000,
                                image_token_id=get_adapter(fp_model).image_token_id)
    masks = [get_adapter(fp_model).modality_mask(s.input_ids) for s in held_out]
    runs = {c: [] for c in CONDITIONS}
    for seed in range(args.seeds):
        for c in CONDITIONS:
            runs[c].append(run_condition(fp_model, processor, args, c, seed, held_out, masks))
            print(f"seed {seed} {c:<12} KL text {runs[c][-1]['kl_text']:.4e} ({runs[c][-1]['seconds']:.1f} s)",
                  flush=True)
    summary = {c: {k: _median(rows, k) for k in rows[0]} for c, rows in runs.items()}
    device = torch.cuda.get_device_name() if QuantConfig(device=args.device).torch_device().type == "cuda" else "cpu"
    meta = {"model": args.model, "method": args.method, "format": args.format, "vision_format": args.vision_format,
            "calib": args.calib, "samples": args.samples, "held_out": args.held_out, "seeds": args.seeds,
            "epochs": args.epochs, "beta": args.beta, "device": device, "torch": torch.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
    text = table(summary)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = "rotation_ablation_" + args.model.replace("/", "_").replace(":", "_")
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "median": summary, "runs": runs}, indent=2))
    (RESULTS / f"{stem}.md").write_text(f"# Modality-weighting ablation ({args.model})\n\n"
                                        + "\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
