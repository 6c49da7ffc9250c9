"""Persistent TMA variant of the integer GEMM (int_gemm.py's formats, layouts and epilogue).

One CTA per SM walks the output tiles in int_gemm_kernel's grouped order; the int8 a [BM, BK]
and w [BN, BK] tiles come through tensor descriptors (TMA on sm_90: no address arithmetic in
the main loop, zero fill past M / N / K), so the software pipeline keeps `num_stages` tile
loads in flight across the K loop.  8-bit operands only: 4-bit weights / activations reach it
expanded to int8 (int_gemm.expand_int4).  A 4-bit-weight variant that unpacked the TMA-loaded
bytes in registers never won a problem on an H200 (int_gemm_NVIDIA_H200_prefill_tma.md: like
the pointer kernel's in-register unpack it feeds wgmma through shared memory) and was dropped.

These are extra tile candidates of int_gemm.candidates (key "tma"); the tuner times them
against the pointer-load kernel and keeps whichever is faster per problem shape.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # an older Triton: no TMA candidates
    TensorDescriptor = None

from .int_gemm_common import store_scaled, tile_coords


@triton.jit
def int_gemm_tma_kernel(a_desc, w_desc, a_scale_ptr, w_scale_ptr, bias_ptr, out_ptr, M, N, K, stride_om,
                        HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                        GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr):
    tiles_m = tl.cdiv(M, BM)
    tiles_n = tl.cdiv(N, BN)
    k_steps = tl.cdiv(K, BK)
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, NUM_SMS):
        pid_m, pid_n = tile_coords(tile, tiles_m, tiles_n, GROUP_M)
        acc = tl.zeros([BM, BN], dtype=tl.int32)
        for ks in range(k_steps):
            a = a_desc.load([pid_m * BM, ks * BK])
            w = w_desc.load([pid_n * BN, ks * BK])
            acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        store_scaled(acc, offs_m, offs_n, M, N, a_scale_ptr, w_scale_ptr, bias_ptr, out_ptr, stride_om, HAS_BIAS)


@functools.lru_cache(maxsize=None)
def _device_facts(index: int) -> tuple[int, int]:
    """(compute capability major, SM count): looked up once per device, not per GEMM call."""
    props = torch.cuda.get_device_properties(index)
    return props.major, props.multi_processor_count


def tma_fits(a: torch.Tensor, w: torch.Tensor, k: int, a_bits: int, w_bits: int) -> bool:
    """Whether the TMA kernel takes this problem: a Triton with tensor descriptors, int8
    operands, 16-byte aligned bases and row strides (K % 16 == 0)."""
    if TensorDescriptor is None or a_bits != 8 or w_bits != 8:
        return False
    if a.is_cuda and _device_facts(a.device.index)[0] < 9:
        return False
    if not a.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    return (k % 16 == 0 and a.data_ptr() % 16 == 0 and w.data_ptr() % 16 == 0 and a.stride(0) % 16 == 0
            and w.stride(0) % 16 == 0)


def launch_tma(cfg: dict, a, a_scale, w, w_scale, bias, out) -> None:
    """One persistent launch (grid = min(tiles, SMs)) of int_gemm_tma_kernel with tile config cfg
    on int8 a [M, K], w [N, K]."""
    m, n = out.shape
    k = a.shape[1]
    bm, bn, bk = cfg["BM"], cfg["BN"], cfg["BK"]
    a_desc = TensorDescriptor(a, [m, k], [a.stride(0), 1], [bm, bk])
    w_desc = TensorDescriptor(w, [n, k], [w.stride(0), 1], [bn, bk])
    sms = _device_facts(a.device.index)[1] if a.is_cuda else 3  # 3: interpreter
    grid = (min(sms, triton.cdiv(m, bm) * triton.cdiv(n, bn)),)
    int_gemm_tma_kernel[grid](
        a_desc, w_desc, a_scale, w_scale, bias if bias is not None else w_scale, out, m, n, k, out.stride(0),
        HAS_BIAS=bias is not None, BM=bm, BN=bn, BK=bk, GROUP_M=cfg["GROUP_M"], NUM_SMS=sms,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
