"""Integer-GEMM and quantize_act benchmark (one device run, baselines measured in the same run).

GEMM: modaq W8A8 / W4A8 / W4A4 (GEMM alone, and the whole quantized linear = ops.int_linear:
quantize_act + GEMM, one fused kernel at decode sizes; at M <= 16 also the two kernels) against torch FP16 F.linear, torch._int_mm (cuBLAS int8) and torch._scaled_mm (FP8
e4m3, per-tensor scales) on the 7B shapes (K x N) and SigLIP's, M in {1, 16, 1024, 4096,
16384} (--ms).  quantize_act: GB/s (bytes read + written) of the plain, Hadamard and Kronecker
variants vs a measured device-to-device copy (--quant-ms / --quant-ks); the Hadamard variant
also with each of its kernels forced where it takes K (persistent, the 8-CTA cluster of decode
sizes, mix first).
The JSON keeps the integer GEMM tuner's pick (chosen_tiles) and every candidate's time
(tile_timings_ms) per problem.  --baselines gemlite,torchao adds those packages' quantized
layers on the same weights (benchmarks/baselines.py: how to install them on the device) next
to modaq's W4A8 / W8A8 layers (--layers-only: only whole layers, for a shorter run;
--shapes: a subset of the K x N shapes).

Timing: every measurement is a CUDA graph of `inner` back-to-back calls (no launch / Python
overhead), replayed `reps` times; the median replay / inner is reported.  When one call's
operands fit in L2 (M <= 256) the calls rotate over enough weight copies to exceed it.  The
layers a graph cannot capture (baselines.EAGER) are timed as eager calls and marked so.

    python benchmarks/bench_int_gemm.py [--quick] [--out benchmarks/results]
writes int_gemm_<device>.json and .md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from modaq import formats, ops
from modaq.hadamard import is_hadamard_size, kron_factors, random_signs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import baselines  # noqa: E402
from benchmarks.bandwidth import copy_bandwidth_gbps  # noqa: E402

SHAPES = [(3584, 3584), (3584, 4608), (3584, 18944), (18944, 3584), (4096, 4096), (4096, 14336),
          (14336, 4096), (1152, 4304), (4304, 1152)]
MS = [1, 16, 1024, 4096, 16384]  # 256 measured by the tests' shapes only (device-time budget)
QUANT_KS = [1152, 3584, 4096, 4304, 14336, 18944]
QUANT_MS = [1024, 4096, 16384]
L2_BYTES = 50 << 20
GEMV_WARPS = (1, 2, 4, 8, 16)


def _inner_calls(est_s: float) -> int:
    """Calls per timed sample: about 5 ms of work, 2..100 calls."""
    return int(min(100, max(2, 5e-3 / max(est_s, 1e-6))))


def _median_per_call(run, inner: int, reps: int) -> float:
    """Median seconds per call over `reps` event-timed runs of run(), each making `inner` calls."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / inner)
    return statistics.median(times)


def time_graph(fn, n_sets: int, est_s: float, reps: int = 5) -> float:
    """Median seconds per fn(i) call, from replays of a graph of `inner` calls (i rotating)."""
    inner = _inner_calls(est_s)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(min(n_sets, 3)):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(inner):
            fn(i % n_sets)
    graph.replay()
    torch.cuda.synchronize()
    t = _median_per_call(graph.replay, inner, reps)
    del graph
    return t


def time_eager(fn, n_sets: int, est_s: float, reps: int = 5) -> float:
    """time_graph's measure for what a CUDA graph cannot capture: `inner` eager calls between two
    events (launch overhead included, so at small sizes it favours the graph-timed columns)."""
    inner = _inner_calls(est_s)
    for i in range(min(n_sets, 3)):
        fn(i)
    torch.cuda.synchronize()

    def calls():
        for i in range(inner):
            fn(i % n_sets)
    return _median_per_call(calls, inner, reps)


def copies(make, nbytes: int, m: int) -> list:
    n = max(1, -(-2 * L2_BYTES // max(nbytes, 1))) if m <= 256 else 1
    return [make() for _ in range(min(n, 48))]


def baseline_columns(row, record, names, x, q4, s4, q8, s8, n_sets: int) -> None:
    """gemlite / torchao layers (benchmarks/baselines.py) on the same quantized weights, rotating
    over up to 8 weight copies, each with its relative error against x @ W^T in fp32."""
    built = [baselines.layers(names, q4, s4, q8, s8) for _ in range(min(n_sets, 8))]
    for name, first in built[0].items():
        if isinstance(first, str):
            row[name] = {"error": first}
            continue
        mods = [b[name] for b in built]
        record(name, lambda i: mods[i](x), len(mods), eager=name.startswith(baselines.EAGER))
        q, sc = (q4, s4) if "w4a8" in name else (q8, s8)
        with torch.no_grad():
            ref = x.float() @ (q.float() * sc[:, None]).t()
            err = float((mods[0](x).float() - ref).norm() / ref.norm())
        row[name]["rel_err"] = err


def gemm_row(k: int, n: int, m: int, baseline_names: tuple = (), layers_only: bool = False) -> dict:
    dev = "cuda"
    flops = 2.0 * m * n * k
    est = max(flops / 600e12, n * k / 2e12)
    x = torch.randn(m, k, dtype=torch.float16, device=dev)
    w = torch.randn(n, k, device=dev)
    q8, s8 = formats.quantize_weight_sym(w, 8)
    q4, s4 = formats.quantize_weight_sym(w, 4)
    w16s = copies(lambda: w.half(), n * k * 2, m)
    w8s = copies(lambda: q8.clone(), n * k, m)
    w4s = copies(lambda: formats.pack_w4_sym(q4), n * k // 2, m)
    xq8, xs8 = ops.quantize_act(x, 8)
    xq4, xs4 = ops.quantize_act(x, 4)
    row = {"K": k, "N": n, "M": m}

    def record(name, fn, n_sets, eager=False):
        try:
            t = time_eager(fn, n_sets, est) if eager else time_graph(fn, n_sets, est)
            row[name] = {"us": t * 1e6, "tops": flops / t / 1e12, **({"timing": "eager"} if eager else {})}
        except Exception as e:  # noqa: BLE001  (a baseline that does not support the shape)
            row[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}

    record("fp16_linear", lambda i: F.linear(x, w16s[i]), len(w16s))
    if not layers_only:
        if m > 16 and k % 8 == 0 and n % 8 == 0:
            w8t = [t.t() for t in w8s]
            record("int_mm", lambda i: torch._int_mm(xq8, w8t[i]), len(w8t))
        x8 = x.to(torch.float8_e4m3fn)
        wf8 = [t.to(torch.float8_e4m3fn).t() for t in w16s]
        one = torch.ones((), device=dev)
        record("fp8_scaled_mm", lambda i: torch._scaled_mm(x8, wf8[i], one, one, out_dtype=torch.float16), len(wf8))
        record("w8a8_gemm", lambda i: ops.w8a8_gemm(xq8, xs8, w8s[i], s8), len(w8s))
        record("w4a8_gemm", lambda i: ops.w4a8_gemm(xq8, xs8, w4s[i], s4), len(w4s))
        record("w4a4_gemm", lambda i: ops.w4a4_gemm(xq4, xs4, w4s[i], s4), len(w4s))
    record("w4a8_layer", lambda i: ops.int_linear(x, w4s[i], s4, a_bits=8, w_bits=4), len(w4s))
    record("w4a4_layer", lambda i: ops.int_linear(x, w4s[i], s4, a_bits=4, w_bits=4), len(w4s))
    if baseline_names:
        record("w8a8_layer", lambda i: ops.int_linear(x, w8s[i], s8, a_bits=8, w_bits=8), len(w8s))
        baseline_columns(row, record, baseline_names, x, q4, s4, q8, s8, len(w4s))
    if m <= 16 and not layers_only:  # the decode GEMV against the Triton GEMM it replaces, and its warp split
        from modaq.ops.fast_int_gemm import fused_fits, int_gemv
        from modaq.triton_kernels.int_gemm import int_gemm
        row["layer_fused"] = fused_fits(x, None, w4s[0], n)
        record("w4a8_layer_2k", lambda i: ops.w4a8_gemm(*ops.quantize_act(x, 8), w4s[i], s4), len(w4s))
        record("w4a8_triton", lambda i: int_gemm(xq8, xs8, w4s[i], s4, None, torch.float16, 8, 4), len(w4s))
        record("w8a8_triton", lambda i: int_gemm(xq8, xs8, w8s[i], s8, None, torch.float16, 8, 8), len(w8s))
        for wp in GEMV_WARPS:
            record(f"w4a8_gemv_w{wp}", lambda i: int_gemv(8, 4, xq8, xs8, w4s[i], s4, None, torch.float16, wp),
                   len(w4s))
        row["weight_bytes"] = n * k // 2 + m * k + m * n * 2 + 4 * (m + n)
    if is_hadamard_size(k):
        signs = random_signs(k, 0, device=dev)
        record("w4a4_hadamard_layer",
               lambda i: ops.int_linear(x, w4s[i], s4, a_bits=4, w_bits=4, hadamard_signs=signs), len(w4s))
    base = row["fp16_linear"].get("us")
    for name, v in row.items():
        if isinstance(v, dict) and "us" in v and base:
            v["speedup_vs_fp16"] = base / v["us"]
    return row


def quant_row(k: int, m: int) -> dict:
    x = torch.randn(m, k, dtype=torch.float16, device="cuda")
    nbytes = m * k * 2 + m * k + m * 4  # read fp16, write int8 + scale
    row = {"K": k, "M": m}
    variants = {"plain": {}}
    if is_hadamard_size(k):
        variants["hadamard"] = {"hadamard_signs": random_signs(k, 0, device="cuda")}
    n1, n2 = kron_factors(k, multiple_of=16)
    variants[f"kron_{n1}x{n2}"] = {"kron_left": torch.randn(n1, n1, device="cuda"),
                                   "kron_right": torch.randn(n2, n2, device="cuda")}
    def timed(kw):
        t = time_graph(lambda i: ops.quantize_act(x, 8, **kw), 1, nbytes / 2e12)
        return {"us": t * 1e6, "gbps": nbytes / t / 1e9}

    for name, kw in variants.items():
        row[name] = timed(kw)
    if "hadamard" in variants:  # each Hadamard kernel, forced where it takes K (fast_activation)
        from modaq.ops import fast_activation
        for kernel in ("persistent", "cluster", "mix"):
            fast_activation.FORCE_HADAMARD = kernel
            try:
                row[f"hadamard_{kernel}"] = timed(variants["hadamard"])
            except ValueError:  # that kernel does not take this K
                pass
            finally:
                fast_activation.FORCE_HADAMARD = None
    return row


def fmt(v, key):
    return f"{v[key]:.1f}" if isinstance(v, dict) and key in v else "n/a"


def markdown(res: dict) -> str:
    lines = [f"# int GEMM / quantize_act on {res['device']}", "",
             f"torch {res['torch']}, triton {res['triton']}, {res['date']}; medians of CUDA-graph replays.", "",
             *[f"Note: {n}" for n in res.get("notes", [])], *([""] if res.get("notes") else [])]
    full = [r for r in res["gemm"] if "w4a8_gemm" in r]  # not --layers-only rows
    if full:
        lines += ["## GEMM (TOPS; `x` = speedup over FP16 F.linear in the same run)", "",
                  "| K x N | M | fp16 | int_mm | fp8 | w8a8 (x) | w4a8 (x) | w4a4 (x) | w4a8 layer (x) | "
                  "w4a4 layer (x) | w4a4+had layer (x) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in full:
        def sx(name):
            v = r.get(name)
            return f"{v['tops']:.0f} ({v['speedup_vs_fp16']:.2f}x)" if isinstance(v, dict) and "tops" in v else "n/a"
        lines.append(f"| {r['K']}x{r['N']} | {r['M']} | " + " | ".join(
            fmt(r.get(n), "tops") for n in ("fp16_linear", "int_mm", "fp8_scaled_mm")) + " | " + " | ".join(
            sx(n) for n in ("w8a8_gemm", "w4a8_gemm", "w4a4_gemm", "w4a8_layer", "w4a4_layer", "w4a4_hadamard_layer")) + " |")
    small = [r for r in res["gemm"] if "weight_bytes" in r]
    if small:
        lines += ["", "## M <= 16: the integer GEMV (csrc/int_gemv.cu) vs the Triton GEMM tiles", "",
                  "us; `%bw` = bytes moved (int4 weights + activations + output) / time / copy bandwidth; "
                  "`x` = speedup over FP16 F.linear; warps = the fastest forced warps per CTA (auto picks its own); "
                  "layer = ops.int_linear (fused: quantize_act inside the GEMV), 2 kernels = quantize_act + GEMM.", "",
                  "| K x N | M | fp16 | triton w4a8 | w4a8 (x, %bw) | w4a4 (x) | w4a8 layer (x) | fused | "
                  "w4a8 2 kernels (x) | best warps (us) | triton w8a8 | w8a8 (x) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in small:
            def us(name):
                v = r.get(name)
                return v["us"] if isinstance(v, dict) and "us" in v else float("nan")
            bw = r["weight_bytes"] / (us("w4a8_gemm") * 1e-6) / 1e9 / res["copy_gbps"]
            best = min(GEMV_WARPS, key=lambda wp: us(f"w4a8_gemv_w{wp}"))
            lines.append(f"| {r['K']}x{r['N']} | {r['M']} | {us('fp16_linear'):.1f} | {us('w4a8_triton'):.1f} | "
                         f"{us('w4a8_gemm'):.1f} ({us('fp16_linear') / us('w4a8_gemm'):.2f}x, {100 * bw:.0f}%) | "
                         f"{us('w4a4_gemm'):.1f} ({us('fp16_linear') / us('w4a4_gemm'):.2f}x) | "
                         f"{us('w4a8_layer'):.1f} ({us('fp16_linear') / us('w4a8_layer'):.2f}x) | "
                         f"{'yes' if r.get('layer_fused') else 'no'} | "
                         f"{us('w4a8_layer_2k'):.1f} ({us('fp16_linear') / us('w4a8_layer_2k'):.2f}x) | "
                         f"{best} ({us(f'w4a8_gemv_w{best}'):.1f}) | {us('w8a8_triton'):.1f} | "
                         f"{us('w8a8_gemm'):.1f} ({us('fp16_linear') / us('w8a8_gemm'):.2f}x) |")
    prefixes = tuple(f"{name}_" for name in baselines.NAMES)
    base = [r for r in res["gemm"] if any(k.startswith(prefixes) for k in r)]
    if base:
        names = sorted({k for r in base for k in r if k.startswith(prefixes)})
        lines += ["", f"## Third-party layers (benchmarks/baselines.py: {res.get('baselines', {})})", "",
                  "us (speedup over FP16 F.linear; relative error vs x @ W^T in fp32; `eager`: timed as eager "
                  "calls, launch and Python overhead included, as a CUDA graph cannot capture it); modaq's layers "
                  "(ops.int_linear) in the same run", "",
                  "| K x N | M | fp16 | modaq w4a8 layer | modaq w8a8 layer | " + " | ".join(names) + " |",
                  "|---|---|---|---|---|" + "---|" * len(names)]
        for r in base:
            def cell(name):
                v = r.get(name)
                if not isinstance(v, dict) or "us" not in v:
                    return "n/a" if not isinstance(v, dict) else f"error: {v.get('error', '')[:60]}"
                err = f"; {v['rel_err']:.1e}" if "rel_err" in v else ""
                eager = "; eager" if "timing" in v else ""
                return f"{v['us']:.1f} ({v['speedup_vs_fp16']:.2f}x{err}{eager})"
            lines.append(f"| {r['K']}x{r['N']} | {r['M']} | {fmt(r.get('fp16_linear'), 'us')} | {cell('w4a8_layer')} | "
                         f"{cell('w8a8_layer')} | " + " | ".join(cell(nm) for nm in names) + " |")
    if res["quant"]:
        lines += ["", f"## quantize_act (int8 out), GB/s; copy bandwidth {res['copy_gbps']:.0f} GB/s", "",
                  "| K | M | variant | us | GB/s | % of copy |", "|---|---|---|---|---|---|"]
    for r in res["quant"]:
        for name, v in r.items():
            if isinstance(v, dict):
                lines.append(f"| {r['K']} | {r['M']} | {name} | {v['us']:.1f} | {v['gbps']:.0f} | "
                             f"{100 * v['gbps'] / res['copy_gbps']:.0f}% |")
    return "\n".join(lines) + "\n"


def save(res: dict, out: Path, final: bool, tag: str = "") -> None:
    from modaq.triton_kernels import int_gemm as tk
    res["chosen_tiles"] = {str(k): v for k, v in tk._CHOSEN.items()}
    res["tile_timings_ms"] = {str(k): [[cfg, ms] for cfg, ms in v] for k, v in tk._TIMED.items()}
    out.mkdir(parents=True, exist_ok=True)
    stem = "int_gemm_" + res["device"].replace(" ", "_").replace("/", "_") + (f"_{tag}" if tag else "")
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    if final:
        (out / f"{stem}.md").write_text(markdown(res))


def _int_list(text: str) -> list[int]:
    """'1,16,1024' -> [1, 16, 1024]; '' -> [] (argparse type of the size lists)."""
    return [int(v) for v in text.split(",") if v]


def _shape_list(text: str) -> list[tuple[int, int]]:
    """'3584x4608,1152x4304' -> [(3584, 4608), (1152, 4304)] (argparse type of --shapes)."""
    try:
        return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KxN shapes separated by commas, got {text!r}") from None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer shapes / M (smoke run)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--ms", type=_int_list, default=MS,
                    help="comma-separated M values of the GEMM table ('' skips it)")
    ap.add_argument("--quant-ms", type=_int_list, default=QUANT_MS,
                    help="comma-separated M values of the quantize_act table")
    ap.add_argument("--quant-ks", type=_int_list, default=QUANT_KS,
                    help="comma-separated K values of the quantize_act table")
    ap.add_argument("--no-quant", action="store_true", help="skip the quantize_act table")
    ap.add_argument("--tag", default="", help="suffix of the result file names (partial re-runs)")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's header (repeatable)")
    ap.add_argument("--shapes", type=_shape_list, default=SHAPES,
                    help="comma-separated KxN weight shapes of the GEMM table (default: the 7B and SigLIP ones)")
    ap.add_argument("--layers-only", action="store_true",
                    help="GEMM table: only the whole layers (FP16 F.linear, ops.int_linear, --baselines), "
                         "not the GEMMs alone, the Triton tiles or the GEMV warp split")
    ap.add_argument("--baselines", type=lambda v: tuple(b for b in v.split(",") if b), default=(),
                    help="comma-separated third-party layers to add to the GEMM table: gemlite, torchao "
                         "(benchmarks/baselines.py says how to install them on the device)")
    args = ap.parse_args()
    import triton
    torch.backends.cuda.matmul.allow_tf32 = False
    out = Path(args.out)
    dev_name = torch.cuda.get_device_name()
    res = {"device": dev_name, "torch": torch.__version__, "triton": triton.__version__,
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "backends": ops.backends(),
           "copy_gbps": copy_bandwidth_gbps(), "gemm": [], "quant": [], "notes": args.note}
    if args.baselines:
        res["baselines"] = {name: baselines.version(name) for name in args.baselines}
    print(f"{dev_name}: copy {res['copy_gbps']:.0f} GB/s", flush=True)
    for k in ([] if args.no_quant else args.quant_ks[:3] if args.quick else args.quant_ks):
        for m in args.quant_ms:
            res["quant"].append(quant_row(k, m))
            print(json.dumps(res["quant"][-1]), flush=True)
    save(res, out, False, args.tag)
    for k, n in (args.shapes[:2] + args.shapes[-2:] if args.quick else args.shapes):
        for m in args.ms:
            res["gemm"].append(gemm_row(k, n, m, args.baselines, args.layers_only))
            print(json.dumps(res["gemm"][-1]), flush=True)
            torch.cuda.empty_cache()
        save(res, out, False, args.tag)
    save(res, out, True, args.tag)
    print(markdown(res))


if __name__ == "__main__":
    main()
