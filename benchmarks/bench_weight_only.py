"""Weight-only kernels (W3A16 / W4A16, group 128) vs FP16 cuBLAS and torch's int4 kernel.

Per shape (K x N) and M, in one process on one device: torch F.linear in fp16 (cuBLAS),
torch._weight_int4pack_mm (tinygemm, bf16), and modaq's w3a16 / w4a16 ops (fp16; W4 also
bf16 for the like-for-like int4 comparison), plus the prefill candidates the op chooses
between (Triton fused, GEMV in 16-row launches, dequantize + cuBLAS whole or in L2-sized row
chunks), the GEMV kernels forced at M <= 16 (the data behind the op's choice between them), a
copy kernel moving as many bytes as the weights (the streaming floor at that size) and a sweep
of the shared-memory GEMV's cluster K split.

Timing: each measurement captures R calls in one CUDA graph, each call reading its own copy
of the weights (R copies span > 2.5x the L2, so no call finds its weights in L2), replays it
and reports the median over replays of (replay time / R).  Achieved bandwidth counts the bytes
a call must move (weights + scales + zeros + x + y) over the median time, next to the
device-to-device copy bandwidth measured in the same run.

    python benchmarks/bench_weight_only.py            # full run -> benchmarks/results/
    python benchmarks/bench_weight_only.py --dry-run  # CPU, tiny shapes: checks the script only
    python benchmarks/bench_weight_only.py --ms 1,2,4,8,16,1024 --skip-candidates  # decode focus (~1 min)
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from modaq import formats, ops
from modaq.ops import fast_weight_only as fwo

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks.bandwidth import copy_bandwidth_gbps  # noqa: E402

SHAPES = [(3584, 3584), (3584, 4608), (3584, 18944), (18944, 3584), (4096, 4096), (4096, 14336), (14336, 4096)]
BIG_SHAPES = [(3584, 18944), (18944, 3584), (4096, 14336), (14336, 4096)]
MS = [1, 2, 4, 8, 16, 64, 256, 1024]
# prefill paths the op chooses between (measured at these M to set its crossovers)
CANDIDATES = {64: ("triton", "gemv", "dq_full", "dq_24mb"), 256: ("gemv", "dq_full", "dq_12mb", "dq_24mb"),
              1024: ("dq_full", "dq_12mb", "dq_24mb", "dq_48mb")}
GROUP = 128
KERNELS = (1, 2)  # forced GEMV kernels (the entry point's `kernel`)
RESULTS = pathlib.Path(__file__).parent / "results"


class Timer:
    """CUDA-graph timing over rotating weight copies (or a host timer in --dry-run)."""

    def __init__(self, device: str, l2_bytes: int, replays: int):
        self.device, self.l2_bytes, self.replays = device, l2_bytes, replays

    def copies(self, weight_bytes: int) -> int:
        if self.device == "cpu":
            return 2
        return max(2, min(64, math.ceil(2.5 * self.l2_bytes / weight_bytes)))

    def __call__(self, calls: list) -> float:
        """Median microseconds per call."""
        for c in calls:
            c()
        if self.device == "cpu":
            t = time.perf_counter()
            for c in calls:
                c()
            return (time.perf_counter() - t) * 1e6 / len(calls)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for c in calls:
                c()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / len(calls))
        del graph
        return statistics.median(times)


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class ShapeSetup:
    """Weights of one (K, N) shape in every format, `copies` of each for L2 rotation."""

    def __init__(self, k: int, n: int, device: str, timer: Timer, with_int4pack: bool):
        self.k, self.n, self.device = k, n, device
        g = k // GROUP
        self.packed, self.logical = {}, {}
        for bits in (3, 4):
            q = torch.randint(0, 2 ** bits, (n, k), dtype=torch.uint8, device=device)
            s = (torch.rand(n, g, device=device) * 0.01 + 1e-3).half()
            z = torch.randint(0, 2 ** bits, (n, g), dtype=torch.uint8, device=device)
            self.logical[bits] = (q, s, z)
            p = (formats.pack_w3 if bits == 3 else formats.pack_w4)(q, s, z)
            self.packed[bits] = [p] + [type(p)(*(t.clone() for t in p)) for _ in range(timer.copies(nbytes(*p)) - 1)]
        w16 = torch.randn(n, k, device=device, dtype=torch.float16) * 0.02
        self.fp16 = [w16] + [w16.clone() for _ in range(timer.copies(nbytes(w16)) - 1)]
        self.int4pack, self.int4pack_error = None, None
        if with_int4pack:
            try:
                self.int4pack = self._int4pack(timer)
            except Exception as e:  # the baseline's API moved: report, measure the rest
                self.int4pack_error = f"{type(e).__name__}: {e}"[:300]

    def _int4pack(self, timer: Timer):
        """tinygemm layout of the W4 weights: w = (q - 8) * s + (8 - z) * s."""
        q, s, z = self.logical[4]
        q_u8 = ((q[:, ::2] << 4) | q[:, 1::2]).contiguous()
        wpack = torch._convert_weight_to_int4pack(q_u8, 8)
        sf = s.float()
        sz = torch.stack([sf, (8 - z.float()) * sf], dim=2).transpose(0, 1).contiguous().to(torch.bfloat16)
        return [(wpack, sz)] + [(wpack.clone(), sz.clone()) for _ in range(timer.copies(nbytes(wpack, sz)) - 1)]


def int4pack_check(setup: ShapeSetup) -> float:
    """Relative error of torch's int4 kernel vs modaq's W4 reference (proves the baseline's layout)."""
    x = torch.randn(4, setup.k, device=setup.device).to(torch.bfloat16)
    wpack, sz = setup.int4pack[0]
    y = torch._weight_int4pack_mm(x, wpack, GROUP, sz)
    ref = ops.reference.w4a16_gemm(x, *setup.packed[4][0], setup.n, GROUP)
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


def measure_shape(setup: ShapeSetup, timer: Timer, ms: list[int], copy_bw: float, candidates: bool = True,
                  kernels: bool = True) -> list[dict]:
    rows = []
    k, n = setup.k, setup.n
    for m in ms:
        x16 = torch.randn(m, k, device=setup.device).half()
        xbf = x16.to(torch.bfloat16)
        out_bytes = m * n * 2 + m * k * 2
        row = {"K": k, "N": n, "M": m}

        def record(name, calls, weight_bytes, io_bytes=out_bytes):
            try:
                us = timer(calls)
            except Exception as e:  # keep measuring the rest; the error goes into the results
                row.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"[:300]
                print(f"  {name} failed: {row['errors'][name]}", flush=True)
                us = float("nan")
            row[f"{name}_us"] = us
            row[f"{name}_GBps"] = (weight_bytes + io_bytes) / us / 1e3
            row[f"{name}_frac_copy_bw"] = row[f"{name}_GBps"] / copy_bw

        record("fp16", [lambda w=w: F.linear(x16, w) for w in setup.fp16], nbytes(setup.fp16[0]))
        if setup.int4pack is not None:
            record("int4pack", [lambda p=p: torch._weight_int4pack_mm(xbf, p[0], GROUP, p[1])
                                for p in setup.int4pack], nbytes(*setup.int4pack[0]))
        for bits, op in ((3, ops.w3a16_gemm), (4, ops.w4a16_gemm)):
            wb = nbytes(*setup.packed[bits][0])
            record(f"w{bits}", [lambda p=p: op(x16, *p, n, GROUP) for p in setup.packed[bits]], wb)
            if bits == 4 and m <= 16:
                record("w4_bf16", [lambda p=p: op(xbf, *p, n, GROUP) for p in setup.packed[4]], wb)
            for cand in CANDIDATES.get(m, ()) if setup.device != "cpu" and candidates else ():
                fn = candidate(cand, bits, x16, n)
                record(f"w{bits}_{cand}", [lambda p=p, fn=fn: fn(p) for p in setup.packed[bits]], wb)
        if m <= fwo.GEMV_MAX_M and kernels and setup.device != "cpu":
            measure_kernels(setup, row, record, x16, xbf)
        if m == ms[0]:
            measure_copy_floor(setup, row, record)
        for name in ("w3", "w4"):
            row[f"{name}_speedup_vs_fp16"] = row["fp16_us"] / row[f"{name}_us"]
        if "int4pack_us" in row:
            row["w4_speedup_vs_int4pack"] = row["int4pack_us"] / row.get("w4_bf16_us", row["w4_us"])
        rows.append(row)
        print(fmt_row(row), flush=True)
    return rows


def measure_kernels(setup: ShapeSetup, row: dict, record, x16, xbf) -> None:
    """Both GEMV kernels forced (1 = shared-memory pipelined, 2 = register pipelined), same run:
    the data behind the op's automatic choice (csrc/weight_only_gemv_launch.cuh)."""
    n = setup.n
    for kernel in KERNELS:
        for bits in (3, 4):
            p0, wb = setup.packed[bits], nbytes(*setup.packed[bits][0])
            record(f"w{bits}_k{kernel}", [lambda p=p: fwo.run_gemv(bits, x16, *p, n, GROUP, kernel=kernel)
                                          for p in p0], wb)
            if bits == 4:
                record(f"w4_bf16_k{kernel}", [lambda p=p: fwo.run_gemv(4, xbf, *p, n, GROUP, kernel=kernel)
                                              for p in p0], wb)


def measure_copy_floor(setup: ShapeSetup, row: dict, record) -> None:
    """An elementwise torch kernel (neg of fp16) that moves as many bytes as the W3 / W4 weights,
    half read and half written, timed like the ops: what a call of that size costs when it only
    streams memory, per-call latency included (the %bw columns divide by the 1 GiB copy).  A
    kernel, not copy_: in a CUDA graph copy_ becomes a memcpy node on a copy engine
    (benchmarks/bandwidth.py).  (torch's int32 sum was tried as a read-only floor: 0.5 TB/s.)"""
    for bits in (3, 4):
        half = nbytes(*setup.packed[bits][0]) // 4  # fp16 elements in half the bytes
        pairs = [(torch.randn(half, device=setup.device).half(), torch.empty(half, dtype=torch.float16,
                                                                              device=setup.device))
                 for _ in setup.packed[bits]]
        record(f"w{bits}_copy", [lambda s=s, d=d: torch.neg(s, out=d) for s, d in pairs], 4 * half, io_bytes=0)


def safe_time(timer: Timer, calls: list) -> float:
    try:
        return timer(calls)
    except Exception as e:
        print(f"  failed: {type(e).__name__}: {e}"[:300], flush=True)
        return float("nan")


def candidate(name: str, bits: int, x: torch.Tensor, n: int):
    """One prefill path as fn(packed weights): Triton fused, GEMV in 16-row launches, or
    dequantize + cuBLAS (all rows at once, or row chunks of the given MB)."""
    if name == "triton":
        return lambda p: fwo.run_triton(bits, x, *p, n, GROUP)
    if name == "gemv":
        return lambda p: fwo.run_gemv(bits, x, *p, n, GROUP)
    chunk = 0 if name == "dq_full" else int(name[3:-2]) << 20
    return lambda p: fwo.run_dequant_cublas(bits, x, *p, n, GROUP, chunk_bytes=chunk)


def split_sweep(setup: ShapeSetup, timer: Timer, copy_bw: float) -> list[dict]:
    """Shared-memory GEMV time at M = 1 for forced cluster K splits (0 = the heuristic)."""
    out = []
    x = torch.randn(1, setup.k, device=setup.device).half()
    for bits in (3, 4):
        wb = nbytes(*setup.packed[bits][0])
        for splits in (0, 1, 2, 3, 4, 8):
            us = safe_time(timer, [lambda p=p: fwo.run_gemv(bits, x, *p, setup.n, GROUP, splits=splits, kernel=1)
                                   for p in setup.packed[bits]])
            out.append({"K": setup.k, "N": setup.n, "bits": bits, "splits": splits, "us": us,
                        "frac_copy_bw": (wb + 2 * (setup.k + setup.n)) / us / 1e3 / copy_bw})
            print(f"  split sweep K={setup.k} N={setup.n} W{bits} splits={splits}: {us:.2f} us", flush=True)
    return out


def fmt_row(r: dict) -> str:
    s = f"K={r['K']:>5} N={r['N']:>5} M={r['M']:>4} | fp16 {r['fp16_us']:8.1f} us"
    if "int4pack_us" in r:
        s += f" | int4 {r['int4pack_us']:8.1f}"
    for b in ("w3", "w4"):
        s += f" | {b} {r[f'{b}_us']:8.1f} ({100 * r[f'{b}_frac_copy_bw']:4.0f}% bw, {r[f'{b}_speedup_vs_fp16']:4.2f}x)"
    if "w4_speedup_vs_int4pack" in r:
        s += f" | w4/int4 {r['w4_speedup_vs_int4pack']:4.2f}x"
    return s


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """The issue's H100 targets, each with the measured numbers it was judged on."""
    def pick(pred):
        return [r for r in rows if pred(r)]

    big = {(k, n) for k, n in BIG_SHAPES}
    out = []

    def add(name, values, ok, judged):
        out.append({"target": name, "measured": values, "pass": bool(judged) and ok})

    m1_big = pick(lambda r: r["M"] == 1 and (r["K"], r["N"]) in big)
    add("W3A16 M=1 >= 80% copy bandwidth (4 largest shapes)",
        {f"{r['K']}x{r['N']}": round(r["w3_frac_copy_bw"], 3) for r in m1_big},
        all(r["w3_frac_copy_bw"] >= 0.8 for r in m1_big), m1_big)
    main = pick(lambda r: r["M"] == 1 and (r["K"], r["N"]) == (3584, 18944))
    add("W3A16 M=1 >= 5x FP16 on 3584x18944", {"speedup": round(main[0]["w3_speedup_vs_fp16"], 2)} if main else {},
        all(r["w3_speedup_vs_fp16"] >= 5 for r in main), main)
    add("W4A16 M=1 >= 80% copy bandwidth (4 largest shapes)",
        {f"{r['K']}x{r['N']}": round(r["w4_frac_copy_bw"], 3) for r in m1_big},
        all(r["w4_frac_copy_bw"] >= 0.8 for r in m1_big), m1_big)
    dec = pick(lambda r: r["M"] <= 16 and "w4_speedup_vs_int4pack" in r)
    add("W4A16 M=1..16 >= 1.5x torch int4 (bf16, every shape and M)",
        {"min": round(min((r["w4_speedup_vs_int4pack"] for r in dec), default=float("nan")), 2),
         "below": [f"{r['K']}x{r['N']} M={r['M']}: {r['w4_speedup_vs_int4pack']:.2f}" for r in dec
                   if r["w4_speedup_vs_int4pack"] < 1.5]},
        all(r["w4_speedup_vs_int4pack"] >= 1.5 for r in dec), dec)
    m16 = pick(lambda r: r["M"] == 16)
    add("W3A16 M=16 >= 3x FP16 (every shape)",
        {f"{r['K']}x{r['N']}": round(r["w3_speedup_vs_fp16"], 2) for r in m16},
        all(r["w3_speedup_vs_fp16"] >= 3 for r in m16), m16)
    m1024 = pick(lambda r: r["M"] == 1024)
    add("M=1024: W3 / W4 time <= 1.3x FP16 (every shape)",
        {f"{r['K']}x{r['N']}": [round(r["w3_us"] / r["fp16_us"], 2), round(r["w4_us"] / r["fp16_us"], 2)]
         for r in m1024},
        all(max(r["w3_us"], r["w4_us"]) <= 1.3 * r["fp16_us"] for r in m1024), m1024)
    return out


def markdown(meta: dict, rows: list[dict], targets: list[dict], splits: list[dict]) -> str:
    lines = [f"# Weight-only kernels on {meta['device']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}, {meta['date']}; group {GROUP}; "
             f"copy bandwidth {meta['copy_bandwidth_GBps']:.0f} GB/s (read + write, 1 GiB D2D); "
             f"medians over {meta['replays']} CUDA-graph replays of L2-rotated calls.  "
             "W3/W4 columns: modaq op (fp16 x; path chosen by M), %bw = achieved / copy bandwidth, "
             "x = speedup over FP16 cuBLAS; int4 = torch._weight_int4pack_mm (bf16) vs modaq W4 in bf16.", ""]
    lines += [f"Note: {note}" for note in meta.get("notes", [])] + ([""] if meta.get("notes") else [])
    lines += ["## Targets", "", "| target | measured | pass |", "|---|---|---|"]
    lines += [f"| {t['target']} | {json.dumps(t['measured'])} | {'yes' if t['pass'] else 'NO'} |" for t in targets]
    lines += ["", "## Times (us)", "",
              "| K x N | M | fp16 | int4 | W3 | W3 %bw | W3 x fp16 | W4 | W4 %bw | W4 x fp16 | W4 bf16 | W4 x int4 |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def f(key, fmt="{:.1f}", scale=1.0):
            return fmt.format(r[key] * scale) if key in r else "-"
        lines.append(f"| {r['K']}x{r['N']} | {r['M']} | {f('fp16_us')} | {f('int4pack_us')} | {f('w3_us')} | "
                     f"{f('w3_frac_copy_bw', '{:.0f}%', 100)} | {f('w3_speedup_vs_fp16', '{:.2f}')} | {f('w4_us')} | "
                     f"{f('w4_frac_copy_bw', '{:.0f}%', 100)} | {f('w4_speedup_vs_fp16', '{:.2f}')} | "
                     f"{f('w4_bf16_us')} | {f('w4_speedup_vs_int4pack', '{:.2f}')} |")
    measured = {m: names for m, names in CANDIDATES.items()
                if any(f"w{b}_{c}_us" in r for r in rows if r["M"] == m for b in (3, 4) for c in names)}
    if measured:  # not with --skip-candidates
        lines += ["", "## Prefill candidates (us)", "",
                  "triton = Triton fused dequant-GEMM; gemv = fused GEMV in 16-row launches; dq_full = dequantize "
                  "all of W then cuBLAS; dq_<n>mb = dequantize + cuBLAS in row chunks of n MB (one reused buffer).", ""]
    for m, names in measured.items():
        lines += [f"M = {m}:", "", "| K x N | fp16 | " + " | ".join(f"W{b} {c}" for b in (3, 4) for c in names) + " |",
                  "|---|---|" + "---|" * (2 * len(names))]
        for r in rows:
            if r["M"] == m:
                cells = [r.get(f"w{b}_{c}_us") for b in (3, 4) for c in names]
                lines.append(f"| {r['K']}x{r['N']} | {r['fp16_us']:.1f} | "
                             + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) + " |")
        lines.append("")
    lines += kernel_table(rows) + copy_floor_table(rows)
    lines += ["", "## GEMV cluster K split, M = 1 (splits 0 = heuristic)", "", "| K x N | bits | splits | us | %bw |",
              "|---|---|---|---|---|"]
    lines += [f"| {s['K']}x{s['N']} | {s['bits']} | {s['splits']} | {s['us']:.2f} | {100 * s['frac_copy_bw']:.0f}% |"
              for s in splits]
    return "\n".join(lines) + "\n"


def kernel_table(rows: list[dict]) -> list[str]:
    """Same-run times of the GEMV kernels forced, next to the op's automatic choice (us)."""
    keys = [("w3", "W3"), ("w4", "W4"), ("w4_bf16", "W4 bf16")]
    if not any(f"{k}_k1_us" in r for r in rows for k, _ in keys):
        return []
    suffixes = [""] + [f"_k{k}" for k in KERNELS]
    lines = ["", "## GEMV kernels, forced (us): op = automatic choice, k1 = shared-memory pipelined, "
             "k2 = register pipelined", "",
             "| K x N | M | " + " | ".join(f"{h} {s[1:] or 'op'}" for _, h in keys for s in suffixes) + " |",
             "|---|---|" + "---|" * (len(suffixes) * len(keys))]
    for r in rows:
        if r["M"] > 16:
            continue
        cells = [r.get(f"{k}{suffix}_us") for k, _ in keys for suffix in suffixes]
        lines.append(f"| {r['K']}x{r['N']} | {r['M']} | "
                     + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) + " |")
    return lines


def copy_floor_table(rows: list[dict]) -> list[str]:
    """Each op at its smallest measured M next to a copy of the same bytes, same run."""
    firsts = [r for r in rows if "w4_copy_us" in r]
    if not firsts:
        return []
    lines = ["", f"## Streaming floor (M = {firsts[0]['M']}, us): an elementwise torch kernel (fp16 neg) moving as "
             "many bytes as the weights (half read, half written), per-call latency included; %copy = its bytes "
             "over its time, over the 1 GiB copy bandwidth", "",
             "| K x N | W3 copy | %copy | W3 op | W3 op / copy | W4 copy | %copy | W4 op | W4 op / copy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in firsts:
        cells = [f"{r[f'w{b}_copy_us']:.1f} | {100 * r[f'w{b}_copy_frac_copy_bw']:.0f}% | {r[f'w{b}_us']:.1f} | "
                 f"{r[f'w{b}_us'] / r[f'w{b}_copy_us']:.2f}" for b in (3, 4)]
        lines.append(f"| {r['K']}x{r['N']} | " + " | ".join(cells) + " |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, host timer: checks the script")
    ap.add_argument("--replays", type=int, default=15)
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    ap.add_argument("--ms", type=lambda v: [int(m) for m in v.split(",")], default=None,
                    help="comma-separated M values (default: %s)" % ",".join(map(str, MS)))
    ap.add_argument("--skip-candidates", action="store_true", help="do not time the prefill candidates")
    ap.add_argument("--skip-split-sweep", action="store_true", help="do not sweep the GEMV cluster split")
    ap.add_argument("--skip-kernels", action="store_true", help="do not time the two GEMV kernels forced")
    args = ap.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    torch.manual_seed(0)
    if args.dry_run:
        shapes, ms, name, l2 = [(256, 80), (384, 48)], [1, 3, 64], "cpu-dry-run", 0
    else:
        props = torch.cuda.get_device_properties(0)
        shapes, ms, name, l2 = SHAPES, args.ms or MS, props.name, props.L2_cache_size
        print(f"backends: {ops.backends()}")
    timer = Timer(device, l2, args.replays)
    copy_bw = copy_bandwidth_gbps(device)
    import triton
    meta = {"device": name, "torch": torch.__version__, "triton": triton.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "copy_bandwidth_GBps": copy_bw, "l2_bytes": l2, "replays": args.replays, "group_size": GROUP,
            "crossovers": {"gemv_max_m": fwo.GEMV_MAX_M, "dequant_chunk_bytes": fwo.DEQUANT_CHUNK_BYTES},
            "ms": ms}
    print(f"{name}: copy bandwidth {copy_bw:.0f} GB/s", flush=True)
    rows, splits, checks = [], [], {}
    for k, n in shapes:
        setup = ShapeSetup(k, n, device, timer, with_int4pack=not args.dry_run)
        if setup.int4pack is not None:
            checks[f"int4pack_rel_err_{k}x{n}"] = int4pack_check(setup)
        if setup.int4pack_error:
            checks[f"int4pack_error_{k}x{n}"] = setup.int4pack_error
        rows += measure_shape(setup, timer, ms, copy_bw, not args.skip_candidates, not args.skip_kernels)
        if not args.dry_run and not args.skip_split_sweep and (k, n) in BIG_SHAPES:
            splits += split_sweep(setup, timer, copy_bw)
        del setup
        if device == "cuda":
            torch.cuda.empty_cache()
        targets = write_results(args.out, meta, checks, rows, splits)  # after every shape
    for t in targets:
        print(f"{'PASS' if t['pass'] else 'MISS'}  {t['target']}: {json.dumps(t['measured'])}")


def write_results(out: pathlib.Path, meta, checks, rows, splits) -> list[dict]:
    targets = evaluate_targets(rows)
    tag = "".join(c if c.isalnum() else "_" for c in meta["device"].lower()).strip("_")
    out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "checks": checks, "targets": targets, "rows": rows, "split_sweep": splits}
    (out / f"weight_only_{tag}.json").write_text(json.dumps(result, indent=1))
    (out / f"weight_only_{tag}.md").write_text(markdown(meta, rows, targets, splits))
    return targets


if __name__ == "__main__":
    main()
