"""End-to-end latency and memory of quantized VLMs (issue 8; MBQ Table 9 layout).

Builds LLaVA-OneVision-7B- and Qwen2-VL-7B-shaped models from their real configs with random
weights directly on the GPU (benchmarks/e2e/models.py), swaps Linears by RTN for each format
(modaq.api.quantize_rtn_) and times, against the FP16 model of the same run:

    ViT prefill      vision tower + projector: LLaVA-OV 1 crop (729 tokens) and 5 crops (anyres
                     2x2 + base, 3645 tokens); Qwen2-VL 896x896 and 1792x896 px (4096 / 8192
                     patches, 1024 / 2048 tokens after the merge); formats W8A8 and W4A8
    LLM prefill      512 / 1024 / 4096 tokens, batch 1, into a static KV cache, lm_head on the
                     last position; decoder formats W3A16, W4A16, W4A8, W4A4 + online Hadamard
                     (QuaRot's deployed layout: online rotation on o_proj / down_proj, the other
                     rotations fold offline into the weights)
    decode           ms per token at batch 1 and 8, 1024 tokens of context, static KV cache, one
                     CUDA-graph-captured step (embedding -> decoder -> lm_head -> argmax fed back)
                     replayed 16 times per timed batch
    memory           bytes of the decoder's Linear weights per format, memory resident after the
                     build + swap, peak memory of the LLM steps

Every step is captured in a CUDA graph and replayed (medians over replays; benchmarks/e2e/
timing.py); a step that cannot be captured is timed eagerly and marked.  One model is built per
(model, format) plan and freed before the next; vision-only plans build the decoder with one
layer.  Results are rewritten after every measurement to <out>/e2e_<device>.json / .md, so a
timeout still leaves data; plans run in order of the issue's targets (each on both models before
the next) and no new measurement starts after --time-budget-s.
The script prints OK / MISS per target.

Time on an H100 (estimate, not yet measured): ~1 min to build modaq._C, ~15 s of imports, then
~15 s per FP16 / weight-only plan and model (build on the GPU, RTN swap, 7 captured steps) and
~60 s more the first time W4A8 and W4A4 run (Triton compiles and tunes ~20 int GEMM variants
each); about 5-6 min in all.  --time-budget-s (default 270) stops starting new measurements;
--models qwen2_vl (or llava_onevision) runs one model; MODAQ_INT_GEMM_TUNE=0 skips the tile
tuning (first candidate config, fewer compiles, possibly slower GEMMs).

    # H100, one device call (build modaq._C, then the benchmark), timeout_s 600:
    MODAQ_CUDA_ARCHS=90a python3 -m pip install --no-build-isolation --no-deps -e . -q && \
        PYTHONPATH=$PWD/python python3 benchmarks/bench_e2e.py --out $OUT
    python benchmarks/bench_e2e.py --dry-run --out /tmp/e2e   # CPU, tiny models: checks the script (~10 s)
"""
from __future__ import annotations

import argparse
import datetime
import gc
import pathlib
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks.e2e import models, report, steps  # noqa: E402
from benchmarks.e2e.timing import Timer, describe  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
# target_prefill: the prefill length of the W4A8 target (the 1024 tokens)
FULL = dict(prefill=(512, 1024, 4096), batches=(1, 8), context=1024, steps=16, replays=10, target_prefill=1024)
TINY = dict(prefill=(8, 16, 32), batches=(1, 2), context=8, steps=2, replays=2, target_prefill=16)
QUAROT_ONLINE = ("o_proj", "down_proj")
NO_LINEAR = "no_linear"  # decoder "format" of the floor diagnostic: Linears replaced by zeros


@dataclass(frozen=True)
class Plan:
    """One model build: the format of each component and what to time on it."""

    column: str  # report.COLUMNS key the timings land in
    decoder: str | None = None
    vision: str | None = None
    rotation_layers: tuple[str, ...] | None = None
    llm: bool = True  # time LLM prefill + decode (else the decoder is built with one layer)
    vit: bool = False  # time the vision stage

    @property
    def decode_only(self) -> bool:  # the no-Linear floor is a decode diagnostic
        return self.decoder == NO_LINEAR


# in the order of the targets: decode W3A16, prefill W4A8, ViT W8A8 / W4A8, weights W4A16, then
# W4A4 (whose first use compiles another ~20 Triton kernel variants)
PLANS = (Plan("fp16", vit=True), Plan("w3a16", decoder="w3a16"), Plan("w4a8", decoder="w4a8"),
         Plan("w8a8", vision="w8a8", llm=False, vit=True), Plan("w4a8", vision="w4a8", llm=False, vit=True),
         Plan("w4a16", decoder="w4a16"), Plan("w4a4_rot", decoder="w4a4", rotation_layers=QUAROT_ONLINE),
         # diagnostic: the decoder's Linears replaced by NoLinear (zeros, no weights read): what decode
         # costs without any Linear work, the floor every weight format's decode time sits above
         Plan("no_linear", decoder=NO_LINEAR))


def plan_name(plan: Plan) -> str:
    return f"decoder {plan.decoder or 'fp16'}" + (f", vision {plan.vision}" if plan.vision else "") + \
        (" (+online Hadamard on " + "/".join(plan.rotation_layers) + ")" if plan.rotation_layers else "")


class Bench:
    """Runs plans (one model build each) and records every measurement into `results`."""

    def __init__(self, args, results: report.Results, timer: Timer, sizes: dict, device: str, dtype):
        self.args, self.results, self.timer, self.sizes = args, results, timer, sizes
        self.device, self.dtype, self.tiny = device, dtype, args.dry_run
        self.start = time.time()

    def over_budget(self) -> bool:
        return self.args.time_budget_s is not None and time.time() - self.start > self.args.time_budget_s

    def run_plan(self, family: str, plan: Plan) -> None:
        if self.over_budget():
            self.results.skipped.append(f"{family} {plan_name(plan)}: time budget")
            return
        print(f"[{time.time() - self.start:6.1f}s] {models.LABELS[family]}: {plan_name(plan)}", flush=True)
        t0 = time.time()
        model = models.build(family, self.device, self.dtype, self.tiny, text_layers=None if plan.llm else 1)
        t1 = time.time()
        if plan.decoder == NO_LINEAR:
            models.strip_linears(models.parts(model).decoder)
        elif plan.decoder or plan.vision:
            from modaq import api
            api.quantize_rtn_(model, plan.decoder, vision_format=plan.vision,
                              rotation="hadamard" if plan.rotation_layers else None,
                              rotation_layers=plan.rotation_layers)
        if self.device == "cuda":  # the swapped-out FP16 Linears are garbage now: give their memory back
            gc.collect()
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        info = {"family": family, "plan": plan_name(plan), "build_s": t1 - t0, "swap_s": time.time() - t1}
        self.results.plans.append(info)
        p = models.parts(model)
        if plan.llm and plan.decoder != NO_LINEAR:  # (its outputs are zeros: no weights, nothing to check)
            self.results.weights.setdefault(family, {})[plan.column] = {
                "decoder_linear_bytes": models.linear_weight_bytes(p.decoder),
                "lm_head_bytes": models.linear_weight_bytes(p.lm_head),  # stays FP16: read every decode step
                "resident_gb": torch.cuda.memory_allocated() / 1e9 if self.device == "cuda" else None}
            try:
                check = steps.check_decode(p, self.device)
            except Exception as e:  # noqa: BLE001  (a check that cannot run is reported, timing goes on)
                check = f"failed: {describe(e)}"
            self.results.checks[f"{family}/{plan.column}/decode_vs_full_forward_rel_err"] = check
        if plan.vit:
            self.time_vision(family, plan, p)
        if plan.llm:
            self.time_llm(family, plan, p)
        del model, p
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
        info["total_s"] = time.time() - t0
        self.results.write()

    def time_vision(self, family: str, plan: Plan, p: models.Parts) -> None:
        for vi in models.vision_inputs(family, self.tiny):
            def make(vi=vi):
                step, checks = steps.vision_step(p, family, vi, self.device, self.dtype)
                for k, v in checks.items():
                    self.results.checks[f"{family}/{plan.column}/{vi.tokens}/{k}"] = v
                return step
            self.measure(family, plan, "vit", vi.label, vi.tokens, 1, make, {})

    def time_llm(self, family: str, plan: Plan, p: models.Parts) -> None:
        for seq in () if plan.decode_only else self.sizes["prefill"]:
            self.measure(family, plan, "prefill", f"{seq} tok", seq, 1,
                         lambda seq=seq: steps.prefill_step(p, seq, self.device), {})
        for batch in self.sizes["batches"]:
            holder = {}

            def make(batch=batch):
                holder["step"] = steps.DecodeStep(p, batch, self.sizes["context"], self.sizes["steps"], self.device)
                return holder["step"]
            self.measure(family, plan, "decode", f"b{batch} (ms/token)", 1, batch, make,
                         {"steps": self.sizes["steps"], "compare": False}, holder)

    def measure(self, family, plan, stage, size, tokens, batch, make, timer_kwargs, holder=None) -> None:
        row = {"model": family, "stage": stage, "size": size, "tokens": tokens, "batch": batch,
               "format": plan.column, "plan": plan_name(plan)}
        if self.over_budget():
            self.results.skipped.append(f"{family} {plan.column} {stage} {size}: time budget")
            return
        try:
            with torch.no_grad():
                step = make()
                kwargs = dict(timer_kwargs)
                if holder is not None:
                    kwargs["before"] = holder["step"].rewind
                row.update(self.timer(step, **kwargs))
                if holder is not None and holder["step"].note:
                    row["note"] = holder["step"].note
        except Exception as e:  # noqa: BLE001  (record it, keep measuring the rest)
            row["error"] = describe(e)
            self.results.skipped.append(f"{family} {plan.column} {stage} {size}: {row['error']}")
        finally:
            step = None
            if holder is not None:
                holder.clear()
            if self.device == "cuda":
                torch.cuda.empty_cache()
        self.results.rows.append(row)
        self.results.write()
        s = self.results.speedup(row) if "ms" in row else None
        print(f"    {stage:8s} {size:38s} {plan.column:9s} " + (
            f"{row['ms']:9.3f} ms" + (f"  {s:5.2f}x" if s and plan.column != 'fp16' else "") + f"  [{row['mode']}]"
            if "ms" in row else row.get("error", "")), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models, host timer: checks the script")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    ap.add_argument("--models", default=",".join(models.FAMILIES), help="comma-separated: %(default)s")
    ap.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    ap.add_argument("--replays", type=int, default=None, help="timed batches per measurement")
    ap.add_argument("--plans", default=None,
                    help="comma-separated plan columns to run (default all: " + ",".join(dict.fromkeys(
                        p.column for p in PLANS)) + ")")
    ap.add_argument("--name", default="", help="result file prefix: e2e_<name>_<device>.json")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="stop starting new measurements after this many seconds (default 270 on the GPU)")
    ap.add_argument("--check-graph-breaks", action="store_true",
                    help="(--dry-run) torch.compile(fullgraph=True) each step first: the CPU proxy for capture")
    args = ap.parse_args()
    families = [f.strip() for f in args.models.split(",") if f.strip()]
    bad = [f for f in families if f not in models.FAMILIES]
    if bad or not families:
        ap.error(f"--models: expected names from {models.FAMILIES}, got {args.models!r}")
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --dry-run on a CPU machine")
    columns = {p.column for p in PLANS}
    wanted = columns if args.plans is None else {c.strip() for c in args.plans.split(",") if c.strip()}
    if not wanted or wanted - columns:
        ap.error(f"--plans: expected names from {sorted(columns)}, got {args.plans!r}")
    device = "cpu" if args.dry_run else "cuda"
    sizes = dict(TINY if args.dry_run else FULL)
    if args.time_budget_s is None and not args.dry_run:
        args.time_budget_s = 270.0
    torch.set_grad_enabled(False)
    if args.dry_run:
        torch.set_num_threads(1)  # tiny ops: more threads only contend on a loaded machine
    results = report.Results(args.out, meta(args, device, sizes), {f: models.LABELS[f] for f in families})
    timer = Timer(device, args.replays or sizes["replays"], check_graph_breaks=args.check_graph_breaks)
    bench = Bench(args, results, timer, sizes, device, getattr(torch, args.dtype))
    if device == "cuda":
        from modaq import ops
        results.meta["backends"] = ops.backends()
        print(f"backends: {results.meta['backends']}", flush=True)
    for plan in (p for p in PLANS if p.column in wanted):  # plan-major: with a short budget both models lose the same (last) plans
        for family in families:
            failed = None
            try:
                bench.run_plan(family, plan)
            except Exception as e:  # noqa: BLE001  (a failed build / swap: record it, go on with the next plan)
                failed = f"{family} {plan_name(plan)}: {describe(e)}"
            if failed:  # outside the except: its traceback (and the model it holds) is gone
                print(f"    FAILED {failed}", flush=True)
                results.skipped.append(failed)
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
                results.write()
    targets = results.write()
    print(results.markdown(targets))
    for t in targets:
        res = {True: "OK  ", False: "MISS", None: "n/a "}[t["pass"]]
        print(f"{res} {models.LABELS[t['model']]}: {t['target']}: {t['measured']}")
    print(f"total {time.time() - bench.start:.0f} s", flush=True)
    return 0


def meta(args, device: str, sizes: dict) -> dict:
    import transformers
    import triton

    name = "cpu-dry-run" if device == "cpu" else torch.cuda.get_device_name(0)
    return {"device": name, "torch": torch.__version__, "triton": triton.__version__,
            "transformers": transformers.__version__, "dtype": args.dtype,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "name": args.name,
            "sizes": sizes, "time_budget_s": args.time_budget_s,
            "method": ("Each step is captured in one CUDA graph and replayed; ms = median over "
                       f"{args.replays or sizes['replays']} timed batches (decode: {sizes['steps']} "
                       f"replays per batch, per-token time). Decode: static KV cache of {sizes['context']} "
                       f"+ {sizes['steps']} positions at {sizes['context']} tokens of context. "
                       "(x) = FP16 time / format time, same model, same run. W4A4+rot: online randomized "
                       "Hadamard fused into the activation quantization of o_proj and down_proj. "
                       "ViT columns W4A8 / W8A8 are the vision tower's format (projector FP16; vision-only "
                       "builds carry a 1-layer decoder). Qwen2-VL ViT: patch embedding, HF's blocks called with "
                       "the keyword arguments its forward passes them (cu_seqlens on the CPU), merger."
                       if device == "cuda" else "Dry run: tiny models on the CPU, reference ops, host timer; "
                       "the numbers check the script, they are not latencies.")}


if __name__ == "__main__":
    sys.exit(main())
