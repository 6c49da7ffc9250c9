"""`modaq demo`: calibrate a tiny built-in VLM with each method and print a fidelity table.

The tiny model has planted outlier activation channels and vision tokens entering the decoder
~20x louder than text (tiny.plant_outliers), the two features of real VLMs that equalization and
modality weighting address.  Each method quantizes a fresh copy on synthetic image-caption data;
the table gives the mean relative block error per stage and modality (on the calibration inputs)
and the KL divergence of next-token distributions on text positions of held-out samples.

When modaq runs from a source checkout that holds the trained CPU benchmark VLM
(benchmarks/checkpoints/vqa-cpu, issue 6), the demo then also calibrates that model with each
method on VQA dialogues and prints exact-match accuracy per task (benchmarks/vqa_quant_accuracy.py
at demo sizes: 32 calibration dialogues, 250 test questions).
"""
from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from .. import formats
from .adapters import get_adapter
from .config import METHODS, QuantConfig
from .data import load_calibration
from .engine import calibrate
from .report import format_summary_table, kl_text_positions
from .tiny import tiny_vlm


def run_demo(family: str = "qwen2_vl", methods: list[str] | None = None, fmt: str = "w4a8",
             vision_format: str | None = "w8a8", samples: int = 16, device: str = "auto", threads: int | None = 1,
             json_path: str | None = None, print_fn=print, vqa: bool = True) -> dict:
    """Run the demo; returns {method: CalibrationResult as dict}.  With `vqa` and a checkout that
    has the trained benchmark VLM, also the VQA accuracy table (module docstring)."""
    if not methods:  # every method that takes the format (flatquant needs quantized activations)
        weight_only = formats.get_format(fmt).weight_only or (
            vision_format not in (None, "none") and formats.get_format(vision_format).weight_only)
        methods = [m for m in METHODS if not (m == "flatquant" and weight_only)]
    configs = {m: QuantConfig(method=m, format=fmt, vision_format=vision_format, samples=samples, device=device,
                              progress=False) for m in methods}  # validates every argument up front
    dev = next(iter(configs.values())).torch_device()
    if threads and dev.type == "cpu":
        torch.set_num_threads(threads)
    start = time.perf_counter()
    fp_model, processor = tiny_vlm(family, outliers=True)
    adapter = get_adapter(fp_model)
    calib = load_calibration(f"synthetic:{samples}", processor, samples, seed=0)
    held_out = load_calibration("synthetic:8", processor, 8, seed=1)
    masks = [adapter.modality_mask(s.input_ids) for s in held_out]
    vf = configs[methods[0]].format_for("vision")
    print_fn(f"modaq demo: tiny {family} (random weights, planted outliers), language {fmt}, "
             f"vision {vf.name if vf else 'fp'}, {samples} synthetic samples, device {dev}")
    results = {}
    for name, cfg in configs.items():
        model = copy.deepcopy(fp_model)
        result = calibrate(model, calib, cfg)
        result.kl_text = kl_text_positions(fp_model, model, held_out, masks, dev)
        results[name] = result
        print_fn(f"  {name:<12} done in {result.seconds:.1f} s")
    print_fn("")
    print_fn("mean relative block error ||y - y_q||^2 / ||y||^2 by stage and modality; "
             "KL(FP || quantized) of next-token distributions on text positions (held-out samples)")
    print_fn(format_summary_table(results))
    if "rtn" in results and results["rtn"].kl_text:
        base = results["rtn"].kl_text
        print_fn("KL vs RTN: " + ", ".join(f"{n} {r.kl_text / base:.2f}x" for n, r in results.items() if n != "rtn"))
    print_fn(f"total {time.perf_counter() - start:.1f} s")
    out = {n: r.to_dict() for n, r in results.items()}
    if vqa and (root := vqa_checkout()) is not None:
        run_vqa_demo(root, methods, fmt, vision_format, device, print_fn)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump({"family": family, "format": fmt, "vision_format": vision_format, "samples": samples,
                       "device": str(dev), "results": out}, f, indent=2)
    return out


VQA_CHECKPOINT = Path("benchmarks") / "checkpoints" / "vqa-cpu"


def vqa_checkout() -> Path | None:
    """The source checkout modaq runs from (python/modaq/calib/demo.py -> the repository root), if
    it holds the VQA accuracy benchmark and its trained CPU checkpoint; None for an installed wheel."""
    root = Path(__file__).resolve().parents[3]
    if (root / "benchmarks" / "vqa_quant_accuracy.py").is_file() and (root / VQA_CHECKPOINT / "config.json").is_file():
        return root
    return None


def run_vqa_demo(root: Path, methods: list[str], fmt: str, vision_format: str | None, device: str,
                 print_fn=print) -> None:
    """VQA exact match of the trained CPU benchmark VLM under each method (demo sizes)."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks import vqa_quant_accuracy as bench
    from benchmarks.vqa.quant_table import FORMAT_SETTINGS

    wanted = {"format": fmt, "vision_format": vision_format if vision_format not in (None, fmt) else None}
    setting = next((name for name, s in FORMAT_SETTINGS.items()
                    if {"format": s["format"], "vision_format": s.get("vision_format")} == wanted), None)
    if setting is None:
        print_fn(f"\nVQA accuracy: the benchmark has no setting for language {fmt} + vision {vision_format} "
                 f"(it has {', '.join(FORMAT_SETTINGS)}); skipped")
        return
    print_fn(f"\nVQA exact match of the trained CPU benchmark VLM ({VQA_CHECKPOINT}), setting {setting}:")
    with tempfile.TemporaryDirectory() as tmp:
        bench.main(["--model", str(root / VQA_CHECKPOINT), "--methods", *methods, "--formats", setting,
                    "--samples", "250", "--calib-samples", "32", "--kl-samples", "16", "--device", device,
                    "--threads", str(torch.get_num_threads()), "--quiet", "--out-json", str(Path(tmp) / "demo.json")])
