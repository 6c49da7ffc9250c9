"""One W3A16 / W4A16 GEMV call per (kernel, shape), for profiling under ncu.

    ncu -k regex:weight_only_gemv python scripts/profile_weight_only_gemv.py --bits 3 --kernels 1,2

`kernels`: the entry point's forced kernel (1 = shared-memory pipelined, 2 = register pipelined,
3 = shared-memory pipelined with its shallow ring).
"""
import argparse

import torch

from modaq import formats
from modaq.ops import fast_weight_only as fwo

ap = argparse.ArgumentParser()
ap.add_argument("--bits", type=int, default=3)
ap.add_argument("--shapes", default="3584x18944,18944x3584", help="KxN,...")
ap.add_argument("--m", type=int, default=1)
ap.add_argument("--kernels", default="1,2")
ap.add_argument("--group", type=int, default=128)
args = ap.parse_args()
pack = formats.pack_w3 if args.bits == 3 else formats.pack_w4
for shape in args.shapes.split(","):
    k, n = map(int, shape.split("x"))
    q = torch.randint(0, 2 ** args.bits, (n, k), dtype=torch.uint8, device="cuda")
    scale = torch.rand(n, k // args.group, device="cuda") * 0.01 + 0.001
    zero = torch.randint(0, 2 ** args.bits, (n, k // args.group), dtype=torch.uint8, device="cuda")
    packed = pack(q, scale, zero)
    x = torch.randn(args.m, k, device="cuda").half()
    for kernel in map(int, args.kernels.split(",")):
        fwo.run_gemv(args.bits, x, *packed, n, args.group, kernel=kernel)
torch.cuda.synchronize()
