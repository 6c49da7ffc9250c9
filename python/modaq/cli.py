"""`modaq` command line: a thin layer over modaq.api and modaq.calib.QuantConfig.

    modaq quantize --model Qwen/Qwen2-VL-7B-Instruct --method mbq --format w4a8 --vision-format w8a8 \\
                   --calib coco:captions_train2017.json,train2017 --out qwen2vl-w4a8-mbq
    modaq quantize --model tiny:qwen2_vl --method flatquant --weighting scale-ratio --format w4a4 --out q
    modaq demo                      # tiny built-in VLM, every method, fidelity table (CPU, ~40 s);
                                    # from a checkout with the trained VQA model also its accuracy (~2 min)
    modaq inspect DIR               # what a saved quantized model holds
"""
from __future__ import annotations

import argparse
import json
import sys

from . import formats

_METHODS = ("rtn", "gptq", "awq", "smoothquant", "mbq", "quarot", "flatquant")
_WEIGHTINGS = ["auto", "none", "mbq", "scale_ratio", "scale-ratio", "fixed"]
_FORMATS = sorted(formats.FORMATS)
_CALIB_HELP = ("calibration data: synthetic[:N] | coco:ANNOTATIONS.json,IMAGE_DIR | "
               "sharegpt4v:FILE.json,IMAGE_DIR | jsonl:FILE.jsonl[,IMAGE_DIR]")


def _add_quant_options(p: argparse.ArgumentParser, method: str = "mbq", fmt: str = "w4a8",
                       vision: str | None = None) -> None:
    g = p.add_argument_group("quantization")
    g.add_argument("--method", default=method, choices=_METHODS, help=f"calibration method (default {method})")
    g.add_argument("--format", default=fmt, choices=_FORMATS, help=f"language decoder format (default {fmt})")
    g.add_argument("--vision-format", default=vision, choices=_FORMATS + ["none"],
                   help="vision tower format (default: --format; 'none' keeps it FP)")
    g.add_argument("--projector-format", default=None, choices=_FORMATS + ["none"],
                   help="projector format (default: --vision-format)")
    g.add_argument("--group-size", type=int, default=128, help="weight group size of w3a16 / w4a16 (64 or 128)")
    g.add_argument("--modality", "--weighting", dest="modality", default="auto", choices=_WEIGHTINGS,
                   help="modality weighting of the loss: mbq (gradients), scale-ratio (lambda_vis = beta * "
                   "S_txt / S_vis), fixed, none (auto: mbq for --method mbq, scale-ratio for flatquant, else none)")
    g.add_argument("--loss", default="auto", choices=["auto", "mae", "mse"],
                   help="reconstruction loss (auto: mae for mbq)")
    g.add_argument("--beta", type=float, default=0.1, help="beta of the scale_ratio weighting (default 0.1)")
    g.add_argument("--fixed-weights", type=float, nargs=2, default=(0.1, 1.0), metavar=("VISION", "TEXT"),
                   help="weights of --modality fixed (default 0.1 1.0)")
    g.add_argument("--no-clip", action="store_true", help="skip the weight clipping search of awq / mbq")
    g.add_argument("--rotation-weights", default="auto", choices=["auto", "gptq", "rtn"],
                   help="weight quantizer after quarot / flatquant transforms (auto: gptq for quarot, rtn for "
                   "flatquant)")
    g.add_argument("--epochs", type=int, default=15, help="flatquant training epochs per block (default 15)")
    g.add_argument("--language-calib", default="multimodal", choices=["multimodal", "text"],
                   help="text: calibrate the decoder on the samples without their images (ablation)")
    g.add_argument("--device", default="auto", help="calibration device: auto, cpu, cuda, cuda:N")
    g.add_argument("--offload-activations", action="store_true", help="keep captured activations on the CPU")
    g.add_argument("--offload-weights", action="store_true",
                   help="MBQ's gradient pass with the weights on the CPU (models larger than the GPU)")
    g.add_argument("--seed", type=int, default=0)


def _config(args, samples: int):
    from .calib import QuantConfig

    return QuantConfig(method=args.method, format=args.format, vision_format=args.vision_format,
                       projector_format=args.projector_format, group_size=args.group_size, samples=samples,
                       visual_token_budget=getattr(args, "visual_token_budget", None),
                       modality=args.modality.replace("-", "_"),
                       loss=args.loss, beta=args.beta, fixed_weights=tuple(args.fixed_weights),
                       clip=False if args.no_clip else None, rotation_weights=args.rotation_weights,
                       flat_epochs=args.epochs, language_calibration=args.language_calib, device=args.device,
                       offload_activations=args.offload_activations,
                       offload_weights=args.offload_weights, seed=args.seed,
                       progress=not getattr(args, "quiet", False))


def _load_model(name: str, dtype: str):
    import torch

    if name.startswith("tiny:"):
        from .calib.tiny import tiny_vlm

        return tiny_vlm(name[5:], outliers=True)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForImageTextToText.from_pretrained(name, dtype=torch_dtype)
    return model.eval(), AutoProcessor.from_pretrained(name)


def cmd_quantize(args) -> int:
    from . import api
    from .calib.report import format_summary_table

    config = _config(args, args.samples)
    model, processor = _load_model(args.model, args.dtype)
    model, result = api.quantize(model, processor, config, args.calib, return_result=True)
    out = api.save_quantized(model, args.out, processor, overwrite=args.overwrite)
    if args.report:
        _write_report(args, config, model, result)
    print(format_summary_table({config.method: result}))
    if result.skipped:
        print(f"kept in floating point: {json.dumps(result.skipped, indent=1)}")
    peak = f", peak GPU memory {result.peak_gpu_bytes / 2**30:.2f} GiB" if result.peak_gpu_bytes else ""
    print(f"calibrated in {result.seconds:.1f} s{peak}; saved to {out}")
    return 0


def _write_report(args, config, model, result) -> None:
    """KL on text positions against a fresh FP copy, on held-out samples of the same source."""
    from . import api
    from .calib import get_adapter, load_calibration

    fp_model, processor = _load_model(args.model, args.dtype)
    held_out = load_calibration(args.calib, processor, args.report_samples, seed=config.seed + 1,
                                visual_token_budget=config.visual_token_budget,
                                image_token_id=get_adapter(fp_model).image_token_id)
    result.kl_text = api.text_kl(fp_model, model, held_out, config.torch_device())
    with open(args.report, "w", encoding="utf-8") as f:
        json.dump(result.to_dict(), f, indent=2)


def cmd_demo(args) -> int:
    from .calib.demo import run_demo

    run_demo(family=args.family, methods=[m for m in args.methods.split(",") if m], fmt=args.format,
             vision_format=args.vision_format,
             samples=args.samples, device=args.device, threads=args.threads, json_path=args.json, vqa=not args.no_vqa)
    return 0


def cmd_inspect(args) -> int:
    from .api import CONFIG_NAME, read_quant_config

    meta = read_quant_config(args.directory)
    print(f"{args.directory}: {meta['architecture']}, method {meta.get('method')}, formats {meta.get('formats')}, "
          f"group size {meta.get('group_size')}, {len(meta['layers'])} quantized Linears "
          f"({len(meta.get('skipped', {}))} kept FP); details in {CONFIG_NAME}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modaq", description="Modality-aware post-training quantization of "
                                     "vision-language models (MBQ and friends) with fused GPU kernels.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    q = sub.add_parser("quantize", help="calibrate and quantize a Hugging Face VLM, save it",
                       description="Calibrate a VLM block by block and save it with modaq modules.")
    q.add_argument("--model", required=True,
                   help="Hugging Face model id or local path (or tiny:FAMILY for a built-in tiny VLM)")
    q.add_argument("--calib", default="synthetic", help=_CALIB_HELP)
    q.add_argument("--out", required=True, help="output directory (written atomically)")
    q.add_argument("--samples", type=int, default=128, help="number of calibration samples (default 128)")
    q.add_argument("--visual-token-budget", type=int, default=None,
                   help="downscale each image to at most this many visual tokens")
    q.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="dtype to load the model in (default: the checkpoint's)")
    q.add_argument("--report", default=None, help="write the fidelity report (errors per layer and block by "
                   "modality, KL on text positions against the FP model) to this JSON file")
    q.add_argument("--report-samples", type=int, default=8, help="held-out samples for the report's KL (default 8)")
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_quant_options(q)
    q.set_defaults(func=cmd_quantize)

    d = sub.add_parser("demo", help="calibrate a tiny built-in VLM with every method and print a fidelity table",
                       description="Build a tiny random VLM with planted outlier channels and loud vision "
                       "tokens, calibrate it with each method on synthetic data, print block errors by "
                       "modality and the KL divergence on text positions against the FP model.")
    d.add_argument("--family", default="qwen2_vl",
                   help="tiny model family (qwen2_vl, qwen2_5_vl, llava, llava_onevision, internvl)")
    d.add_argument("--methods", default="", help="comma-separated methods (default: all that take the format)")
    d.add_argument("--format", default="w4a8", choices=_FORMATS, help="language decoder format (default w4a8)")
    d.add_argument("--vision-format", default="w8a8", choices=_FORMATS + ["none"],
                   help="vision / projector format (default w8a8)")
    d.add_argument("--samples", type=int, default=16, help="synthetic calibration samples (default 16)")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda")
    d.add_argument("--threads", type=int, default=1, help="CPU threads (tiny matrices: 1 is fastest)")
    d.add_argument("--json", default=None, help="also write the results to this JSON file")
    d.add_argument("--no-vqa", action="store_true", help="skip the VQA accuracy part (run from a checkout that "
                   "holds benchmarks/checkpoints/vqa-cpu, the demo also scores that trained VLM per method)")
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("inspect", help="summarize a directory written by modaq quantize")
    i.add_argument("directory")
    i.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"modaq {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
