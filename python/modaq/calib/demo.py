"""`modaq demo`: calibrate a tiny built-in VLM with each method and print a fidelity table.

The tiny model has planted outlier activation channels and vision tokens entering the decoder
~20x louder than text (tiny.plant_outliers), the two features of real VLMs that equalization and
modality weighting address.  Each method quantizes a fresh copy on synthetic image-caption data;
the table gives the mean relative block error per stage and modality (on the calibration inputs)
and the KL divergence of next-token distributions on text positions of held-out samples.
"""
from __future__ import annotations

import copy
import json
import time

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
             json_path: str | None = None, print_fn=print) -> dict:
    """Run the demo; returns {method: CalibrationResult as dict}."""
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
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump({"family": family, "format": fmt, "vision_format": vision_format, "samples": samples,
                       "device": str(dev), "results": out}, f, indent=2)
    return out
