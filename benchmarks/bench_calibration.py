"""Calibration of 7B VLMs on one GPU: wall time per phase, peak GPU memory, host RSS (issue 5).

Builds a Qwen2-VL-7B-shaped model (and, with --models, a LLaVA-OneVision-7B-shaped one) from the
real configs with random weights (benchmarks/e2e/models.py: created directly on the GPU in bf16,
then moved to the host, where a loaded checkpoint would live), a processor built in code to match
the config (benchmarks/calibration/processors.py), and synthetic calibration samples (images of
shapes with captions, --image-size px square: 448 px gives Qwen2-VL 1024 patches -> 256 image
tokens, LLaVA-OneVision 5 crops -> ~3700 image tokens).  Then, for each --methods entry, a fresh
model is calibrated with modaq.api.quantize (the block-wise engine: weights on the host, one block
on the GPU at a time; MBQ's gradient pass puts the whole model on the GPU unless
--offload-weights) and timed per phase:

    build        random-weight model on the GPU          to host   model.to('cpu')
    data         processor + samples (once per model)     sensitivity   MBQ's gradient pass
    vision / projector / language   capture + block-wise calibration of that stage
    other        the engine's moves and preparation        check     quantized model forward on one sample

with the peak GPU memory (torch.cuda.max_memory_allocated / max_memory_reserved) and host RSS
(sampled every 50 ms) of each phase.  Method entries: METHOD[_FORMAT] with the decoder FORMAT
(default w4a8), e.g. rtn, mbq, mbq_w3a16; the vision tower and projector take --vision-format
(default w8a8: language W4A8 + vision W8A8, the MQuant setting).  Results are rewritten after
every run to <out>/calibration_<device>.json / .md; a run starts only if, judging by the longest
finished run, it ends within --time-budget-s of the script's start (default 300 s on the GPU).
--num-samples defaults to 32 (MBQ uses 128) to bound the time; the output says so.

Time on an H100 for Qwen2-VL-7B, 32 samples of 448 px (estimate, not yet measured): ~1 min to
build modaq._C, ~15 s imports; per run ~5-10 s build on the GPU + ~5-8 s to the host; RTN
~1-1.5 min (vision ~10 s, decoder ~15 s, moves, and the first run's Triton int GEMM compiles:
MODAQ_INT_GEMM_TUNE=0 compiles one tile config per problem class instead of timing 2-4); MBQ
~1.5-2 min (gradient pass ~15 s with the whole model on the GPU, ~20 GB peak; equalization search
~1-1.5 s per decoder block, ~0.3 s per vision block): about 5 min in all.  LLaVA-OneVision's
~3700-token samples make the gradient pass hold ~21 GB of saved activations (~45 GB peak).

    # H100, one device call (build modaq._C, then the benchmark), timeout_s 420:
    MODAQ_CUDA_ARCHS=90a python3 -m pip install --no-build-isolation --no-deps -e . -q && \\
        PYTHONUNBUFFERED=1 MODAQ_INT_GEMM_TUNE=0 PYTHONPATH=$PWD/python python3 benchmarks/bench_calibration.py \\
        --models qwen2_vl --methods rtn,mbq --out $OUT 2>&1 | tee $OUT/log.txt
    # (MODAQ_NO_CUDA=1 in front of pip skips the ~1 min _C build: activation quantization then runs
    #  the reference op on the GPU, the int GEMMs stay Triton)
    python benchmarks/bench_calibration.py --dry-run --out /tmp/calib   # CPU, tiny models (~6 s)
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import pathlib
import sys
import time
import traceback

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks.calibration import monitor, report  # noqa: E402
from benchmarks.calibration.processors import processor_for  # noqa: E402
from benchmarks.e2e import models  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
DEFAULT_FORMAT = "w4a8"


def parse_methods(text: str) -> list[tuple[str, str, str]]:
    """'rtn,mbq_w3a16' -> [(entry, method, decoder format)]."""
    from modaq import formats
    from modaq.calib.config import METHODS

    out = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        method, _, fmt = entry.partition("_")
        fmt = fmt or DEFAULT_FORMAT
        if method not in METHODS or fmt not in formats.FORMATS:
            raise ValueError(f"--methods: {entry!r} is not METHOD[_FORMAT] with METHOD in {METHODS} and "
                             f"FORMAT in {sorted(formats.FORMATS)}")
        out.append((entry, method, fmt))
    if not out:
        raise ValueError("--methods: expected at least one entry, e.g. rtn,mbq")
    return out


def make_samples(family: str, config, n: int, image_size: int, seed: int = 0):
    """(samples, stats) of `n` synthetic image-caption pairs in the model's chat template."""
    from modaq.calib.data import build_samples, synthetic_pairs

    processor = processor_for(config)
    samples = build_samples(synthetic_pairs(n, seed, image_size, image_size), processor,
                            image_token_id=config.image_token_id)
    v = config.vision_config
    seq = [s.input_ids.shape[1] for s in samples]
    vis = [int((s.input_ids == config.image_token_id).sum()) for s in samples]
    if family == "qwen2_vl":
        tower = [int(s.inputs["image_grid_thw"].prod()) for s in samples]
    else:
        tower = [s.inputs["pixel_values"].shape[1] * (v.image_size // v.patch_size) ** 2 for s in samples]
    stats = {"seq_mean": sum(seq) / n, "seq_max": max(seq), "vision_tokens_mean": sum(vis) / n,
             "tower_tokens_mean": sum(tower) / n}
    return samples, stats


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Bench:
    """Runs (model, method) calibrations, one fresh model each, and records them into `results`."""

    def __init__(self, args, results: report.Results, device: torch.device, host: monitor.HostMemory):
        self.args, self.results, self.device, self.host = args, results, device, host
        self.dtype = getattr(torch, args.dtype)
        self.start = time.time() - monitor.process_age_s()  # the budget counts the imports too
        self.samples: dict[str, list] = {}

    def elapsed(self) -> float:
        return time.time() - self.start

    def over_budget(self) -> bool:
        """True when the next run would end after --time-budget-s, judging by the longest
        finished run (an overestimate: the first run also pays the one-time compiles)."""
        if self.args.time_budget_s is None:
            return False
        longest = max((r["seconds"] for r in self.results.runs if "seconds" in r), default=0.0)
        return self.elapsed() + longest > self.args.time_budget_s

    def data(self, family: str) -> list:
        """The family's samples, made once (their time is reported per model, not per run)."""
        if family not in self.samples:
            cfg = models.config(family, self.args.dry_run)
            t0 = time.perf_counter()
            samples, stats = make_samples(family, cfg, self.args.num_samples, self.args.image_size)
            data_s = time.perf_counter() - t0
            params = sum(p.numel() for p in models.build(family, "meta", self.dtype, self.args.dry_run).parameters())
            self.results.data[family] = {"label": label(family, self.args.dry_run), "params": params,
                                         "data_s": data_s, "samples": stats}
            self.samples[family] = samples
            print(f"[{self.elapsed():6.1f}s] data: {self.results.data[family]}", flush=True)
        return self.samples[family]

    def run(self, family: str, entry: str, method: str, fmt: str) -> None:
        from modaq.api import quantize
        from modaq.calib import QuantConfig
        from modaq.nn import QuantLinear

        row = {"family": family, "label": label(family, self.args.dry_run), "method": entry, "format": fmt,
               "vision_format": self.args.vision_format}
        t0 = time.perf_counter()
        self.results.runs.append(row)
        print(f"[{self.elapsed():6.1f}s] {row['label']}: {entry} (decoder {fmt}, vision {self.args.vision_format})",
              flush=True)
        samples = self.data(family)
        probe = monitor.PhaseProbe(self.device, self.host)
        row["phases"] = probe.phases
        with probe.phase("build"):
            model = models.build(family, str(self.device), self.dtype, self.args.dry_run)
        with probe.phase("to_host"):
            model.to("cpu")
            release(self.device)
        cfg = QuantConfig(method=method, format=fmt, vision_format=self.args.vision_format,
                          samples=len(samples), device=str(self.device), offload_weights=self.args.offload_weights,
                          progress=not self.args.no_progress)
        row["config"] = cfg.to_dict()
        with probe.installed(), probe.phase("calibrate"):
            model, result = quantize(model, None, cfg, samples, return_result=True)
        inner = sum(probe.phases[k]["seconds"] for k in ("sensitivity", "vision", "projector", "language")
                    if k in probe.phases)
        probe.phases["other"] = {"seconds": probe.phases["calibrate"]["seconds"] - inner}
        row["errors"] = {s: {m: result.mean_block_error(s, m) for m in ("vision", "text")}
                         for s in ("vision", "projector", "language")}
        row["quantized_linears"] = sum(isinstance(m, QuantLinear) for m in model.modules())
        row["skipped_linears"] = len(result.skipped)
        row["notes"] = result.notes
        self.results.write()
        if not self.args.no_check:
            with probe.phase("check"):
                row["check"] = check_forward(model, samples[0], self.device)
        del model, result
        release(self.device)
        row["host_max_rss_gb"] = monitor.max_rss_bytes() / monitor.GB
        row["seconds"] = time.perf_counter() - t0  # the whole run, data included the first time
        self.results.write()
        print(f"[{self.elapsed():6.1f}s]   " + "  ".join(
            f"{k} {v['seconds']:.1f}s" + (f" (GPU {v['gpu_peak_allocated_gb']:.1f} GB)"
                                          if v.get("gpu_peak_allocated_gb") is not None else "")
            for k, v in probe.phases.items()), flush=True)


@torch.no_grad()
def check_forward(model, sample, device: torch.device) -> str:
    """The calibrated model on `device`, one sample forward: 'finite logits' or what went wrong."""
    from modaq.calib.capture import to_device

    model.to(device)  # the caller frees the model afterwards
    logits = model(**to_device(sample.inputs, device), use_cache=False).logits
    return "finite logits" if bool(torch.isfinite(logits).all()) else "NON-FINITE logits"


def label(family: str, tiny: bool) -> str:
    return models.LABELS[family] + (" (tiny)" if tiny else "")


def meta(args, device: torch.device) -> dict:
    import transformers

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    cuda = device.type == "cuda"
    info = {"device": torch.cuda.get_device_name(device) if cuda else "cpu-dry-run", "torch": torch.__version__,
            "transformers": transformers.__version__, "triton": triton_version, "dtype": args.dtype,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "num_samples": args.num_samples, "image_size": args.image_size, "time_budget_s": args.time_budget_s,
            "offload_weights": args.offload_weights, "cpus": os.cpu_count(),
            "host_ram_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / monitor.GB,
            "gpu_total_gb": torch.cuda.get_device_properties(device).total_memory / monitor.GB if cuda else None,
            "int_gemm_tune": os.environ.get("MODAQ_INT_GEMM_TUNE", "1")}
    info["method"] = (
        "Each run builds a fresh model, moves it to the host and calls modaq.api.quantize on it (one block "
        "on the device at a time; the MBQ gradient pass " + ("streams each module's weights to the GPU "
                                                             "(offload_weights)" if args.offload_weights else
                                                             "holds the whole model on the GPU") + "). "
        "Seconds are wall time of one run (no repeats: each phase runs once per calibration). Peaks are "
        "per phase (counters reset when the phase starts; 'calibration total' covers its inner phases); "
        "host RSS is sampled every 50 ms. The first run of a process also pays one-time costs (Triton "
        "compiles of the int GEMMs, CUDA / cuBLAS initialization)."
        if cuda else "Dry run: tiny models on the CPU, reference ops; the numbers check the script, they "
        "are not the 7B timings.")
    return info


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models: checks the script")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    ap.add_argument("--models", default="qwen2_vl", help=f"comma-separated from {models.FAMILIES}")
    ap.add_argument("--methods", default="rtn,mbq", help="comma-separated METHOD[_FORMAT], e.g. rtn,mbq,mbq_w3a16")
    ap.add_argument("--vision-format", default="w8a8", help="vision tower + projector format ('none': FP)")
    ap.add_argument("--num-samples", type=int, default=None, help="calibration samples (default 32; dry run 4)")
    ap.add_argument("--image-size", type=int, default=None,
                    help="synthetic image side in px (default 448; dry run 112)")
    ap.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    ap.add_argument("--offload-weights", action="store_true", help="MBQ gradient pass with weights on the host")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="start no run that would end after this many seconds of the script, judging by "
                         "the longest finished run (default 300 on the GPU)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--no-check", action="store_true", help="skip the forward check of the calibrated model")
    args = ap.parse_args(argv)
    args.families = [f.strip() for f in args.models.split(",") if f.strip()]
    if not args.families or any(f not in models.FAMILIES for f in args.families):
        ap.error(f"--models: expected names from {models.FAMILIES}, got {args.models!r}")
    try:
        args.plans = parse_methods(args.methods)
    except ValueError as e:
        ap.error(str(e))
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --dry-run on a CPU machine")
    args.num_samples = args.num_samples or (4 if args.dry_run else 32)
    args.image_size = args.image_size or (112 if args.dry_run else 448)
    if args.num_samples <= 0 or args.image_size < 28:
        ap.error("--num-samples: expected > 0; --image-size: expected >= 28")
    if args.time_budget_s is None and not args.dry_run:
        args.time_budget_s = 300.0
    return args


def main() -> int:
    args = parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        torch.set_num_threads(1)  # tiny ops: more threads only contend on a loaded machine
    results = report.Results(args.out, meta(args, device))
    if device.type == "cuda":
        from modaq import ops
        results.meta["backends"] = ops.backends()
        print(f"backends: {results.meta['backends']}", flush=True)
    print(f"{args.num_samples} calibration samples (MBQ's default is 128; --num-samples bounds the time), "
          f"{args.image_size} px images, {results.meta['device']}", flush=True)
    host = monitor.HostMemory()
    bench = Bench(args, results, device, host)
    for family in args.families:
        for entry, method, fmt in args.plans:
            if bench.over_budget():
                results.skipped.append(f"{label(family, args.dry_run)} {entry}: time budget")
                continue
            failed = None
            try:
                bench.run(family, entry, method, fmt)
            except Exception as e:  # noqa: BLE001  (record it, go on with the next run)
                traceback.print_exc()
                failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            if failed:  # outside the except: the traceback (and the model it holds) is gone
                results.runs[-1]["error"] = failed
                results.skipped.append(f"{label(family, args.dry_run)} {entry}: {failed}")
                release(device)
            results.write()
    host.close()
    path = results.write()
    print(results.markdown())
    print(f"wrote {path} and {path.with_suffix('.md')}; total {bench.elapsed():.0f} s", flush=True)
    return 1 if any("error" in r for r in results.runs) else 0


if __name__ == "__main__":
    sys.exit(main())
