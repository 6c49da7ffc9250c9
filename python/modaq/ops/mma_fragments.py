"""Constant matrices in mma.sync m16n8k16 (bf16 / fp16) fragment order, for the fused transform kernels.

An fp32 matrix is split into `terms` bf16 (or fp16) matrices whose sum reproduces it (3 bf16
terms carry the 24 bits of an fp32 significand, 2 fp16 terms 22; +-1 matrices need 1),
zero-padded to whole 16 x 16 (A) or 16 x 8 (B) tiles, and each lane's registers are laid out
contiguously so a warp loads one fragment with one coalesced 16-byte (A) or 8-byte (B) access
per lane:

  A [rows, k]: int32 [rows/16][k/16][terms][32 lanes][4 regs]
      lane = 4 g + c holds A[g][2c:2c+2], A[g+8][2c:2c+2], A[g][2c+8:2c+10], A[g+8][2c+8:2c+10]
  B [k, n]:    int32 [n/8][k/16][terms][32 lanes][2 regs]
      lane = 4 g + c holds B[2c:2c+2][g], B[2c+8:2c+10][g]

each register holding two 16-bit values, the lower k (A: lower column) in the low 16 bits.
These are the PTX ISA fragment layouts of mma.m16n8k16 .row.col with .bf16 / .f16 operands.
kron_operands prepares the two Kronecker factors for csrc/quantize_act_kron.cu.

An A operand exact in tf32 (here the +-1 Hadamard cores) also comes in mma.m16n8k8 .tf32 order,
one fp32 bit pattern per register (a_fragments_tf32):

  A [rows, k]: int32 [rows/16][k/8][32 lanes][4 regs]
      lane = 4 g + c holds A[g][c], A[g+8][c], A[g][c+4], A[g+8][c+4]
"""
from __future__ import annotations

import torch


def split_terms(x: torch.Tensor, terms: int, dtype: torch.dtype = torch.bfloat16) -> list[torch.Tensor]:
    """x (fp32) -> [t0, t1, ...] in dtype with sum(t.float()) ~= x (each term rounds the residual)."""
    out, r = [], x.float()
    for _ in range(terms):
        t = r.to(dtype)
        out.append(t)
        r = r - t.float()
    return out


def _pad(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    out = x.new_zeros(rows, cols, dtype=torch.float32)
    out[: x.shape[0], : x.shape[1]] = x
    return out


def _as_regs(frags: torch.Tensor) -> torch.Tensor:
    """[..., regs, 2] 16-bit -> [..., regs] int32 (element 0 in the low half, little-endian)."""
    return frags.contiguous().view(torch.int16).view(torch.int32).squeeze(-1)


def a_fragments(a: torch.Tensor, terms: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """A operand [rows, k] (fp32) -> int32 [rows/16, k/16, terms, 32, 4] (padded to 16s)."""
    rows, k = a.shape
    rt, ks = -(-rows // 16), -(-k // 16)
    lane = torch.arange(32, device=a.device)
    g, c = (lane // 4)[:, None, None], (lane % 4)[:, None, None]
    reg = torch.arange(4, device=a.device)[None, :, None]
    half = torch.arange(2, device=a.device)[None, None, :]
    row_idx = (g + 8 * (reg % 2)).expand(32, 4, 2)
    col_idx = 2 * c + 8 * (reg // 2) + half
    parts = []
    for t in split_terms(_pad(a, rt * 16, ks * 16), terms, dtype):
        tiles = t.reshape(rt, 16, ks, 16).permute(0, 2, 1, 3)  # [rt, ks, 16, 16]
        parts.append(tiles[:, :, row_idx, col_idx])  # [rt, ks, 32, 4, 2]
    return _as_regs(torch.stack(parts, dim=2))


def a_fragments_tf32(a: torch.Tensor) -> torch.Tensor:
    """A operand [rows, k] (fp32, exact in tf32) -> int32 [rows/16, k/8, 32, 4] (padded)."""
    rows, k = a.shape
    if not torch.equal(a.float(), _tf32(a.float())):
        raise ValueError("a_fragments_tf32: a must be exact in tf32 (10 mantissa bits)")
    rt, ks = -(-rows // 16), -(-k // 8)
    lane = torch.arange(32, device=a.device)
    g, c = (lane // 4)[:, None], (lane % 4)[:, None]
    reg = torch.arange(4, device=a.device)[None, :]
    tiles = _pad(a, rt * 16, ks * 8).reshape(rt, 16, ks, 8).permute(0, 2, 1, 3)  # [rt, ks, 16, 8]
    return tiles[:, :, g + 8 * (reg % 2), c + 4 * (reg // 2)].contiguous().view(torch.int32)


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """x with the 13 low significand bits cleared (what a tf32 mma operand keeps)."""
    return (x.contiguous().view(torch.int32) & ~0x1FFF).view(torch.float32)


def b_fragments(b: torch.Tensor, terms: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """B operand [k, n] (fp32) -> int32 [n/8, k/16, terms, 32, 2] (padded to 16 x 8 tiles)."""
    k, n = b.shape
    ks, nt = -(-k // 16), -(-n // 8)
    lane = torch.arange(32, device=b.device)
    g, c = (lane // 4)[:, None, None], (lane % 4)[:, None, None]
    reg = torch.arange(2, device=b.device)[None, :, None]
    half = torch.arange(2, device=b.device)[None, None, :]
    k_idx = 2 * c + 8 * reg + half
    n_idx = g.expand(32, 2, 2)
    parts = []
    for t in split_terms(_pad(b, ks * 16, nt * 8), terms, dtype):
        tiles = t.reshape(ks, 16, nt, 8).permute(2, 0, 1, 3)  # [nt, ks, 16, 8]
        parts.append(tiles[:, :, k_idx, n_idx])  # [nt, ks, 32, 2, 2]
    return _as_regs(torch.stack(parts, dim=2))


def _exponent_bound(v: torch.Tensor) -> torch.Tensor:
    """The least integer e with v <= 2^e (v >= 0; 0 for v = 0), as an int32 tensor."""
    mant, e = torch.frexp(v)  # v = mant 2^e, mant in [0.5, 1)
    return (e - (mant == 0.5).to(e.dtype)).to(torch.int32)


DATA_MAX_EXP = 14  # operands scaled to at most 2^14: clear of fp16's 65504 (kDataMaxExp in csrc/quantize_act_kron.cu)


def kron_operands(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """P1 [n1, n1], P2 [n2, n2] (fp32) -> (A fragments of P1''^T [n1p/16, n1p/16, 2, 32, 4],
    B fragments of P2'' [n2p/8, n2p/16, 32, 2 terms, 2], consts fp32 [2]) for quantize_act_kron.

    Both factors are split into two fp16 terms after a power-of-two scaling (exact) that puts
    their largest |element| at <= 2^14, so the low terms keep their bits: P2'' = P2 2^cR,
    P1'' = P1 2^cL.  consts = (2^-zR, 2^(zR - cR - cL)) with 2^zR >= the largest column
    abs-sum of P2'': the kernel multiplies Z = X_r P2'' by consts[0] (|Z| <= 2^14 for
    |X_r| <= 2^14) and Y by consts[1].  Padded to multiples of 16 (n1p, n2p).  Torch ops only
    (no host sync), on left's device.
    """
    n1, n2 = left.shape[0], right.shape[0]
    n1p, n2p = -(-n1 // 16) * 16, -(-n2 // 16) * 16
    c_r = DATA_MAX_EXP - _exponent_bound(right.abs().amax())
    c_l = DATA_MAX_EXP - _exponent_bound(left.abs().amax())
    right_s = torch.ldexp(right.float(), c_r)
    left_s = torch.ldexp(left.float(), c_l)
    z_r = _exponent_bound(right_s.abs().sum(0).amax())
    a = a_fragments(_pad(left_s.t(), n1p, n1p), 2, torch.float16)
    b = b_fragments(_pad(right_s, n2p, n2p), 2, torch.float16).permute(0, 1, 3, 2, 4).contiguous()
    one = torch.ones((), dtype=torch.float64, device=left.device)
    consts = torch.stack([torch.ldexp(one, -z_r), torch.ldexp(one, z_r - c_r - c_l)]).float()
    return a, b, consts
