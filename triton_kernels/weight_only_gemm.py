"""Triton fused dequant-GEMM of the weight-only formats (W3A16 / W4A16) for larger M (prefill).

Computes y[M, N] = x[M, K] @ ((q - zero) * scale)^T (+ bias), fp32 accumulation, y in x.dtype,
reading the packed layout of modaq.weight_only_layout directly (no dequantized copy).

Math.  The K loop walks 64-k units (one unit never crosses a group).  Per unit the program
gathers its weights' (q - zero) as exact small integers in x.dtype, lets tl.dot sum
x * (q - zero) in fp32, and multiplies the unit's partial product by the per-row scale:
y = sum_units scale[n, g(unit)] * (x_unit @ (q - z)_unit^T), so weights are never rounded.

Layout.  The packed weights are in mma-fragment order for the CUDA GEMV, not row-major, so the
program gathers each element's 32-bit word (4-bit: 1 word; 3-bit: 1 word, 3 for the spilled
slot 15) with offsets computed once before the K loop: within a (16-row, 256-k) block the word
of element (k, n) only moves by a constant per unit.  The words of a unit (1.5 / 2 KB per 16
rows) stay in L1 across the 8 / 10 elements that share each word.

Roofline.  Above M ~ 64 the tensor cores dominate: 2 M N K flops at ~600 TFLOP/s vs the weight
bytes at ~3 TB/s; the gather + decode costs ~10 integer ops per weight per program, amortized
over BLOCK_M rows.

Measured on an H100 (Triton 3.6, benchmarks/results/weight_only_*.md): 20-70x slower than
dequantize + cuBLAS at M = 64 .. 1024 (e.g. W3 3584 x 18944, M = 64: 2.46 ms vs 0.115 ms): the
per-element gathers and the int -> dot-operand layout conversion dominate.  So modaq's op
uses dequantize + cuBLAS above M = 16 and this kernel only where modaq._C is not built.  A
competitive fused prefill kernel would load whole packed blocks and decode in registers in
mma layout (as the CUDA GEMV does) rather than gather per element.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

UNIT_K = 64
BLOCK_WORDS = {3: 384, 4: 512}  # int32 words per packed (16-row, 256-k) block


@triton.jit
def _unit_offsets(rn, BITS: tl.constexpr):
    """Per element (k in the unit, n): word offset in its block at unit 0, shift, spill flag."""
    kk = tl.arange(0, 64)
    r16 = rn % 16
    g = r16 % 8
    rh = r16 // 8
    step = kk // 16
    kh = (kk % 16) // 8
    t = (kk % 8) // 2
    h = kk % 2
    slot = (step * 4 + kh * 2)[:, None] + rh[None, :]  # [64, BN]: 4 s + 2 kh + rh
    lane = t[:, None] + 4 * g[None, :]
    if BITS == 4:
        off = lane * 4 + slot // 4  # [u][lane][word]: unit stride 128 words
        shift = (slot % 4) * 4 + (h * 16)[:, None]
        spill = slot < 0
    else:
        spill = slot == 15
        off = tl.where(spill, 0, slot // 5) * 128 + lane * 4  # [word][lane][u]: unit stride 1
        shift = tl.where(spill, 15, (slot % 5) * 3) + (h * 16)[:, None]
    return off, shift, spill


@triton.jit
def _weight_only_gemm_kernel(x_ptr, q_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K, KT,
                             BITS: tl.constexpr, GROUP: tl.constexpr, GT: tl.constexpr, WORDS: tl.constexpr,
                             UNIT_STRIDE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n  # GROUP_M row blocks of x share each weight column block in L2
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = tl.arange(0, 64)
    m_ok = rm < M
    n_ok = rn < N
    off, shift, spill = _unit_offsets(rn, BITS)
    tile = rn // 16
    r16 = rn % 16
    sz_lane = (r16 % 8) * (2 * GT) + r16 // 8  # scale / zero element of (g, rh) in its block
    q_tile = (tile * KT * WORDS)[None, :] + off
    fmask = tl.where(spill, 1, 7 if BITS == 3 else 15)
    x_rows = x_ptr + rm[:, None] * K

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for unit in range(0, K // 64):
        kt = unit // 4
        qp = q_ptr + q_tile + kt * WORDS + (unit % 4) * UNIT_STRIDE
        wq = tl.load(qp, mask=n_ok[None, :], other=0)
        v = (wq >> shift) & fmask
        if BITS == 3:  # slot 15: bits 1, 2 live in words 1, 2 of the lane
            w1 = tl.load(qp + 128, mask=spill & n_ok[None, :], other=0)
            w2 = tl.load(qp + 256, mask=spill & n_ok[None, :], other=0)
            v = v | (((w1 >> shift) & 1) << 1) | (((w2 >> shift) & 1) << 2)
        j = (unit * 64 // GROUP) % GT
        sz = (tile * KT + kt) * (16 * GT) + sz_lane + 2 * j
        zero = tl.load(z_ptr + sz, mask=n_ok, other=0).to(tl.int32)
        scale = tl.load(s_ptr + sz, mask=n_ok, other=0.0).to(tl.float32)
        w = (v - zero[None, :]).to(x_ptr.dtype.element_ty)  # exact: |v - z| <= 15
        xt = tl.load(x_rows + unit * 64 + kk[None, :], mask=m_ok[:, None], other=0.0)
        acc += tl.dot(xt, w) * scale[None, :]

    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + rm[:, None] * N + rn[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def default_config(m: int) -> dict:
    """Tile shape by M (fixed table; the benchmark measures it against dequant + cuBLAS)."""
    if m <= 32:
        return {"block_m": 32, "block_n": 64, "num_warps": 4, "num_stages": 3}
    if m <= 64:
        return {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3}
    return {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3}


def weight_only_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                     bits: int, out_features: int, group_size: int, bias: torch.Tensor | None = None,
                     config: dict | None = None) -> torch.Tensor:
    """x [M, K] fp16 / bf16 (contiguous) @ packed W3 / W4 weights -> [M, out_features] in x.dtype.

    Inputs are validated by modaq.ops.weight_only (pack_w3 / pack_w4 layouts); `config`
    overrides default_config(M) (keys block_m, block_n, num_warps, num_stages).
    """
    m, k = x.shape
    n = out_features
    cfg = dict(default_config(m), **(config or {}))
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, cfg["block_m"]) * triton.cdiv(n, cfg["block_n"]),)
    _weight_only_gemm_kernel[grid](
        x, qweight.view(torch.int32), scales, zeros, bias if bias is not None else y, y,
        m, n, k, triton.cdiv(k, 256), BITS=bits, GROUP=group_size, GT=256 // group_size,
        WORDS=BLOCK_WORDS[bits], UNIT_STRIDE=1 if bits == 3 else 128, HAS_BIAS=bias is not None,
        BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], GROUP_M=8,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return y
