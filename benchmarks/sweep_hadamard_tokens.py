"""Tokens per CTA of the register Hadamard quantize kernel (csrc/quantize_act_hadamard.cu): one
device run times quantize_act with the randomized Hadamard (int8 out, fp16 in) for each forced
token count and the automatic choice (0), at the 7B / SigLIP sizes whose core m <= 60.

    python benchmarks/sweep_hadamard_tokens.py [--out benchmarks/results]
writes hadamard_tokens_<device>.json and .md (us per call; % = bytes read + written over the
measured copy bandwidth).
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from benchmarks.bandwidth import copy_bandwidth_gbps
from benchmarks.bench_int_gemm import time_graph
from modaq.hadamard import hadamard_factors, random_signs
from modaq.ops import _cuda
from modaq.ops.fast_activation import _hadamard_left

KS = (1152, 3584, 4096, 14336)
MS = (1, 1024, 4096, 16384)
TOKENS = (0, 1, 2, 3, 4, 8)


def sweep_row(k: int, m: int) -> dict:
    core, p = hadamard_factors(k)
    signs = random_signs(k, 0, device="cuda")
    left, core_t = _hadamard_left(core, torch.device("cuda")) if core > 1 else (None, None)
    x = torch.randn(m, k, dtype=torch.float16, device="cuda")
    q = torch.empty(m, k, dtype=torch.int8, device="cuda")
    scale = torch.empty(m, device="cuda")
    row = {"K": k, "M": m, "bytes": m * k * 3 + m * 4, "us": {}}
    for tokens in TOKENS:
        def call(i, tokens=tokens):
            _cuda._C.quantize_act_hadamard(_cuda.ptr(x), 0, _cuda.ptr(signs), _cuda.ptr(left), _cuda.ptr(core_t),
                                           _cuda.ptr(q), _cuda.ptr(scale), m, core, p, 8, _cuda.DTYPE_CODE[x.dtype],
                                           x.device.index, torch.cuda.current_stream().cuda_stream, 1.0, tokens)
        try:
            row["us"][str(tokens)] = time_graph(call, 1, row["bytes"] / 2e12) * 1e6
        except ValueError:  # more tokens than the CTA's shared-memory budget holds
            row["us"][str(tokens)] = None
    return row


def markdown(res: dict) -> str:
    lines = [f"# Hadamard quantize: tokens per CTA on {res['device']}", "",
             f"torch {res['torch']}, {res['date']}; copy bandwidth {res['copy_gbps']:.0f} GB/s; us per call "
             "(CUDA-graph medians), `-` = over the CTA's shared-memory budget; 0 = the automatic choice.", "",
             "| K | M | " + " | ".join(f"tokens {t}" for t in TOKENS) + " | auto % of copy |",
             "|---|---|" + "---|" * (len(TOKENS) + 1)]
    for r in res["rows"]:
        us = [r["us"][str(t)] for t in TOKENS]
        pct = 100 * r["bytes"] / (us[0] * 1e-6) / 1e9 / res["copy_gbps"]
        lines.append(f"| {r['K']} | {r['M']} | " + " | ".join("-" if u is None else f"{u:.1f}" for u in us) +
                     f" | {pct:.0f}% |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "copy_gbps": copy_bandwidth_gbps(), "rows": []}
    for k in KS:
        for m in MS:
            res["rows"].append(sweep_row(k, m))
            print(json.dumps(res["rows"][-1]), flush=True)
    stem = "hadamard_tokens_" + res["device"].lower().replace(" ", "_")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
