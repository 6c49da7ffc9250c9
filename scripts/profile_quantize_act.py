"""quantize_act with the randomized Hadamard (or Kronecker) transform, one call per K, for ncu.

    ncu -k regex:quantize python scripts/profile_quantize_act.py --ks 3584,4096 --m 4096
"""
import argparse

import torch

from modaq import ops
from modaq.hadamard import random_signs

ap = argparse.ArgumentParser()
ap.add_argument("--ks", default="3584,4096,18944")
ap.add_argument("--m", type=int, default=4096)
ap.add_argument("--bits", type=int, default=8)
ap.add_argument("--kron", default="", help="n1xn2 factors instead of the Hadamard transform")
args = ap.parse_args()
for k in map(int, args.ks.split(",")):
    x = torch.randn(args.m, k, dtype=torch.float16, device="cuda")
    if args.kron:
        n1, n2 = map(int, args.kron.split("x"))
        kw = {"kron_left": torch.randn(n1, n1, device="cuda"), "kron_right": torch.randn(n2, n2, device="cuda")}
    else:
        kw = {"hadamard_signs": random_signs(k, 0, device="cuda")}
    ops.quantize_act(x, args.bits, **kw)
torch.cuda.synchronize()
