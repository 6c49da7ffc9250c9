"""Integer tensor-core GEMMs with the per-token x per-channel scale epilogue (W8A8, W4A8, W4A4).

    out[m, n] = fp32(sum_k a[m, k] * w[n, k]) * a_scale[m] * w_scale[n] (+ bias[n])

in fp16 / bf16 / fp32 (the store casts once, after the fp32 epilogue, in the order the
reference uses: (acc * a_scale) * w_scale + bias).  Products accumulate exactly in int32
(|a|, |w| <= 127, K < 2^17).

Layouts (modaq.formats):
  a  int8 [M, K] row-major, or (A4) packed int4 uint8 [M, K/2]
  w  int8 [N, K] row-major (W8), or packed int4 uint8 [N, K/2] (W4)
  4-bit rows are "half-block paired": K is cut into blocks of 128 values (the last one holds
  L = K mod 128); byte j of a block of length L holds value j (low nibble) and value j + L/2
  (high nibble).  So one packed [rows, 64] slice unpacks with two shifts into two int8 tiles
  for k0..k0+63 and k0+64..k0+127, and each is multiplied with a *contiguous* activation
  slice: the kernel issues two int8 tl.dot's per 128-block and never interleaves registers.

On sm_90 the int8 tl.dot lowers to wgmma (tiles with BM >= 64) or mma.sync (small BM); W4A4
is emulated through int8 MMA (the native s4 mma.sync is ~20x slower on Hopper).  The int4
weights are read from memory packed (4x fewer bytes than fp16) and unpacked in registers.

SWAP computes the transposed tile W @ A^T instead, so the unpacked weights are the MMA's A
operand (wgmma can take A from registers) and, for M <= 16, N fills the MMA's M dimension.
Tile configs: a few candidates per M regime, timed once per problem shape on first use
(candidates / _choose).  Roofline aims (H100): large M is MMA-bound (int8 dense peak ~1979
TOPS); M <= 16 is bound by reading the weights (N*K/2 bytes for int4).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .int_gemm_common import store_scaled, tile_coords
from .int_gemm_tma import launch_tma, tma_fits

PAIR_BLOCK = 128  # must match modaq.formats.PAIR_BLOCK (passed to the kernel as PB)


@triton.jit
def _dot(acc, a, w, SWAP: tl.constexpr):
    """acc += a @ w^T ([BM, BN]), or with SWAP acc += w @ a^T ([BN, BM])."""
    if SWAP:
        return tl.dot(w, tl.trans(a), acc, out_dtype=tl.int32)
    return tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)


@triton.jit
def _paired_block(acc, a_rows, w_rows, kb, half, j, A4: tl.constexpr, MASKED: tl.constexpr, SWAP: tl.constexpr):
    """acc += A[:, kb:kb+2*half] @ W[:, kb:kb+2*half]^T for one half-block-paired 4-bit block
    (half = 64 for a full block).  a_rows / w_rows: [BM, 1] / [BN, 1] row base pointers."""
    cols = kb // 2 + j[None, :]  # packed byte offsets of the block
    if MASKED:
        mask = j[None, :] < half
        wp = tl.load(w_rows + cols, mask=mask, other=0)
    else:
        wp = tl.load(w_rows + cols)
    w8 = wp.to(tl.int8, bitcast=True)
    w_lo = (w8 << 4) >> 4  # arithmetic shifts sign-extend the two's-complement nibbles
    w_hi = w8 >> 4
    if A4:
        if MASKED:
            ap = tl.load(a_rows + cols, mask=mask, other=0)
        else:
            ap = tl.load(a_rows + cols)
        a8 = ap.to(tl.int8, bitcast=True)
        a_lo = (a8 << 4) >> 4
        a_hi = a8 >> 4
    else:
        if MASKED:
            a_lo = tl.load(a_rows + (kb + j)[None, :], mask=mask, other=0)
            a_hi = tl.load(a_rows + (kb + half + j)[None, :], mask=mask, other=0)
        else:
            a_lo = tl.load(a_rows + (kb + j)[None, :])
            a_hi = tl.load(a_rows + (kb + half + j)[None, :])
    acc = _dot(acc, a_lo, w_lo, SWAP)
    acc = _dot(acc, a_hi, w_hi, SWAP)
    return acc


@triton.jit
def _w4_mainloop(acc, a_rows, w_rows, K, A4: tl.constexpr, BK: tl.constexpr, PB: tl.constexpr, SWAP: tl.constexpr):
    j = tl.arange(0, PB // 2)
    k_main = (K // BK) * BK
    for k0 in range(0, k_main, BK):
        for s in tl.static_range(BK // PB):
            acc = _paired_block(acc, a_rows, w_rows, k0 + s * PB, PB // 2, j, A4, False, SWAP)
    for kb in range(k_main, (K // PB) * PB, PB):  # leftover full blocks
        acc = _paired_block(acc, a_rows, w_rows, kb, PB // 2, j, A4, False, SWAP)
    if K % PB != 0:  # the short last block pairs j with j + L/2
        kb = (K // PB) * PB
        acc = _paired_block(acc, a_rows, w_rows, kb, (K - kb) // 2, j, A4, True, SWAP)
    return acc


@triton.jit
def _w8_mainloop(acc, a_rows, w_rows, K, BK: tl.constexpr, SWAP: tl.constexpr):
    kk = tl.arange(0, BK)
    k_main = (K // BK) * BK
    for k0 in range(0, k_main, BK):
        a = tl.load(a_rows + (k0 + kk)[None, :])
        w = tl.load(w_rows + (k0 + kk)[None, :])
        acc = _dot(acc, a, w, SWAP)
    if k_main < K:
        mask = (k_main + kk)[None, :] < K
        a = tl.load(a_rows + (k_main + kk)[None, :], mask=mask, other=0)
        w = tl.load(w_rows + (k_main + kk)[None, :], mask=mask, other=0)
        acc = _dot(acc, a, w, SWAP)
    return acc


@triton.jit
def int_gemm_kernel(a_ptr, a_scale_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr, M, N, K,
                    stride_am, stride_wn, stride_om,
                    A4: tl.constexpr, W4: tl.constexpr, HAS_BIAS: tl.constexpr, PB: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                    SWAP: tl.constexpr):
    pid_m, pid_n = tile_coords(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GROUP_M)

    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    # rows past M / N re-read valid rows (wrapped) so the K loop needs no masks; not stored
    rm = offs_m % M
    rn = offs_n % N
    a_rows = a_ptr + rm[:, None].to(tl.int64) * stride_am
    w_rows = w_ptr + rn[:, None].to(tl.int64) * stride_wn

    if SWAP:
        acc = tl.zeros([BN, BM], dtype=tl.int32)
    else:
        acc = tl.zeros([BM, BN], dtype=tl.int32)
    if W4:
        acc = _w4_mainloop(acc, a_rows, w_rows, K, A4, BK, PB, SWAP)
    else:
        acc = _w8_mainloop(acc, a_rows, w_rows, K, BK, SWAP)
    if SWAP:
        acc = tl.trans(acc)

    store_scaled(acc, offs_m, offs_n, M, N, a_scale_ptr, w_scale_ptr, bias_ptr, out_ptr, stride_om, HAS_BIAS)


@triton.jit
def expand_int4_kernel(src_ptr, dst_ptr, R, K, BR: tl.constexpr, PB: tl.constexpr):
    """Half-block-paired int4 rows uint8 [R, K/2] -> int8 [R, K] (formats.PAIR_BLOCK layout)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)[:, None]
    start = tl.program_id(1) * PB
    half = tl.minimum(K - start, PB) // 2
    j = tl.arange(0, PB // 2)[None, :]
    mask = (j < half) & (rows < R)
    b = tl.load(src_ptr + rows.to(tl.int64) * (K // 2) + start // 2 + j, mask=mask, other=0)
    b = b.to(tl.int8, bitcast=True)
    out = dst_ptr + rows.to(tl.int64) * K + start + j
    tl.store(out, (b << 4) >> 4, mask=mask)
    tl.store(out + half, b >> 4, mask=mask)


def expand_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """int4 -> int8 in memory (one read of the packed bytes, one write): the large-M W4 path
    trades ~N*K*1.5 bytes of traffic for running the W8 kernel (see candidates)."""
    rows = packed.numel() // (k // 2)
    out = torch.empty(rows, k, dtype=torch.int8, device=packed.device)
    br = 16
    expand_int4_kernel[(triton.cdiv(rows, br), triton.cdiv(k, PAIR_BLOCK))](
        packed, out, rows, k, BR=br, PB=PAIR_BLOCK, num_warps=4)
    return out


def _cfg(bm, bn, bk, warps, stages, group_m=8, swap=False):
    return dict(BM=bm, BN=bn, BK=bk, GROUP_M=group_m, num_warps=warps, num_stages=stages, SWAP=swap)


def candidates(m: int, n: int, k: int, w_bits: int) -> list[dict]:
    """Tile configs to try for an [m, n, k] problem, best guess first.

    M <= 16: weight-streaming (memory-bound) tiles, BM = 16 (mma.sync), long K slices so each
    CTA keeps several KB of weights in flight; BN = 16 doubles the CTA count for narrow N.
    Larger M: wgmma tiles (BM >= 64), 128 x 256 x 128 (the 8-bit Hopper tutorial shape) or
    128 x 128 x 128 with one more pipeline stage; M <= 16 and large M also try SWAP.  M > 64
    also tries the persistent TMA kernel (int_gemm_tma.py) and, for 4-bit weights, int4 -> int8
    expansion first: on an H200 expansion won W4A8 / W4A4 on every 7B shape at M = 512-4096,
    ~2x over the in-register unpack, through the TMA kernel on most of them
    (int_gemm_NVIDIA_H200_prefill_tma.md).
    MODAQ_INT_GEMM_TUNE=0 skips the timing and takes the first candidate.
    """
    bk_small = 512 if w_bits == 4 else 256
    if m <= 16:
        cands = [_cfg(16, 32, bk_small, 4, 4, 1), _cfg(16, 16, bk_small, 4, 5, 1),
                 _cfg(16, 64, bk_small, 4, 4, 1, swap=True)]
    elif m <= 64:
        cands = [_cfg(64, 64, 128, 4, 4), _cfg(32, 64, 256, 4, 4)]
    elif m <= 512:
        cands = [_cfg(64, 128, 128, 4, 4), _cfg(64, 64, 128, 4, 4), _cfg(128, 128, 128, 8, 4)]
    else:
        cands = [_cfg(128, 256, 128, 8, 3), _cfg(128, 128, 128, 8, 4), _cfg(128, 256, 128, 8, 3, swap=True)]
    if m > 64:
        # persistent TMA kernels (int_gemm_tma.py, int8 operands); launch() refuses problems they
        # do not take
        if w_bits == 8:
            cands += [dict(_cfg(128, 256, 128, 8, 3), tma=True), dict(_cfg(128, 128, 128, 8, 4), tma=True)]
        else:
            # the fused int4 unpack feeds wgmma through a register -> shared-memory round trip
            # (~500 TOPS on H100); expanding to int8 first costs ~1.5 bytes per weight of
            # traffic and runs the ~1000-TOPS W8 kernel, which wins once M amortizes it
            cands += [dict(_cfg(128, 256, 128, 8, 3), expand=True), dict(_cfg(128, 256, 128, 8, 3), expand=True, tma=True),
                      dict(_cfg(128, 128, 128, 8, 4), expand=True, tma=True)]
            if m <= 512:  # the W8 kernel's fastest tile at M = 512 on most 7B shapes
                cands.append(dict(_cfg(64, 128, 128, 4, 4), expand=True))
    return cands


def launch(cfg: dict, a, a_scale, w, w_scale, bias, out, a_bits: int, w_bits: int) -> None:
    """One int_gemm_kernel launch with tile config cfg into out [M, N]."""
    m, n = out.shape
    k = a.shape[1] * (2 if a_bits == 4 else 1)
    if cfg.get("expand"):  # int4 -> int8 in memory, then the W8 kernel
        if w_bits == 4:
            w, w_bits = expand_int4(w, k), 8
        if a_bits == 4:
            a, a_bits = expand_int4(a, k), 8
    if cfg.get("tma"):
        if not tma_fits(a, w, k, a_bits, w_bits):
            raise ValueError("int_gemm: the TMA kernel does not take this problem (alignment, K, a_bits)")
        return launch_tma(cfg, a, a_scale, w, w_scale, bias, out)
    grid = (triton.cdiv(m, cfg["BM"]) * triton.cdiv(n, cfg["BN"]),)
    int_gemm_kernel[grid](
        a, a_scale, w, w_scale, bias if bias is not None else w_scale, out, m, n, k,
        a.stride(0), k // 2 if w_bits == 4 else k, out.stride(0),
        A4=a_bits == 4, W4=w_bits == 4, HAS_BIAS=bias is not None, PB=PAIR_BLOCK,
        BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], GROUP_M=cfg["GROUP_M"], SWAP=cfg.get("SWAP", False),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


_CHOSEN: dict[tuple, dict] = {}  # problem key -> config that measured fastest
_TIMED: dict[tuple, list] = {}  # problem key -> [(config, median ms of 3 launches)] of the tuning


def _bucket(m: int) -> int:
    return m if m <= 16 else 1 << (m - 1).bit_length()


_TUNE_ROUNDS = 5  # timing rounds per candidate; the median decides


def _event_ms(work) -> float:
    """Milliseconds of work() on the current stream, CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    work()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def _three_launches(run, cfg) -> None:
    for _ in range(3):
        run(cfg)


def _cuda_ms(run, cfg) -> float:
    """Milliseconds of 3 back-to-back eager launches of cfg."""
    return _event_ms(lambda: _three_launches(run, cfg))


def _graph_timer():
    """A timer (run, cfg) -> ms that captures cfg's 3 launches once in a CUDA graph and times
    its replays.  Eager samples include the host's launch latency, which weighs on the
    candidates that launch more (int4 expansion: two kernels and an allocation) or build TMA
    descriptors in Python, while the models and benchmarks replay graphs.  A candidate that
    cannot be captured is timed eagerly (_cuda_ms)."""
    graphs: dict[int, torch.cuda.CUDAGraph | None] = {}

    def timer(run, cfg) -> float:
        if id(cfg) not in graphs:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    _three_launches(run, cfg)
            except Exception:  # noqa: BLE001  (not capturable here: eager timing)
                graph = None
            graphs[id(cfg)] = graph
        graph = graphs[id(cfg)]
        return _cuda_ms(run, cfg) if graph is None else _event_ms(graph.replay)

    return timer


def _choose(key, cands, run, fallback, timer=None) -> dict:
    """Time the candidates that build, keep the one with the lowest median time.  The rounds
    interleave the candidates so clock drift hits all alike; one 3-launch sample per candidate
    picked a 2x slower tile on an H200 at M = 1024 in some runs
    (benchmarks/results/int_gemm_NVIDIA_H200_largeM.md).  If none builds (e.g. a Triton without
    int8 wgmma from registers), use `fallback`: 4-bit operands expanded to int8 in memory, then
    the W8 kernel.

    Runs on the first call of a problem key (it synchronizes; the samples are replays of a CUDA
    graph per candidate, _graph_timer); under CUDA-graph capture an unseen key takes the first
    candidate without timing.
    """
    if key in _CHOSEN:
        return _CHOSEN[key]
    if torch.cuda.is_current_stream_capturing():
        return cands[0]
    built = []
    for cfg in cands:
        try:
            run(cfg)  # compile + warm up
        except Exception:  # noqa: BLE001  (config does not build / fit on this GPU: try the next)
            continue
        built.append(cfg)
    times = [[] for _ in built]
    timer = timer or _graph_timer()
    for _ in range(_TUNE_ROUNDS if len(built) > 1 else 0):
        for i, cfg in enumerate(built):
            times[i].append(timer(run, cfg))
    medians = [sorted(t)[len(t) // 2] if t else 0.0 for t in times]
    _TIMED[key] = list(zip(built, medians))
    best = built[min(range(len(built)), key=medians.__getitem__)] if built else None
    if best is None and fallback is not None:
        run(fallback)  # raises if even the expanded W8 path cannot run
        best = fallback
    if best is None:
        raise RuntimeError(f"int_gemm: no tile config builds for problem {key}")
    _CHOSEN[key] = best
    return best


def int_gemm(a: torch.Tensor, a_scale: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
             bias: torch.Tensor | None, out_dtype: torch.dtype, a_bits: int, w_bits: int,
             config: dict | None = None) -> torch.Tensor:
    """int GEMM with the scale epilogue on validated, contiguous inputs (module docstring).

    a: int8 [M, K] (a_bits = 8) or uint8 [M, K/2] (a_bits = 4); w: int8 [N, K] (w_bits = 8) or
    uint8 [N, K/2] (w_bits = 4); a_scale fp32 [M]; w_scale fp32 [N]; bias [N] or None.
    Returns [M, N] in out_dtype.  config: a fixed tile config (else chosen per problem shape).
    """
    m = a.shape[0]
    k = a.shape[1] * (2 if a_bits == 4 else 1)
    n = w_scale.shape[0]
    out = torch.empty(m, n, dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_() if bias is None else out.copy_(bias.to(out_dtype).expand(m, n))

    def run(cfg):
        launch(cfg, a, a_scale, w, w_scale, bias, out, a_bits, w_bits)

    if config is None:
        cands = candidates(m, n, k, w_bits)
        if a.device.type != "cuda" or os.environ.get("MODAQ_INT_GEMM_TUNE", "1") == "0":
            config = cands[0]  # CPU tensors (TRITON_INTERPRET), or timing switched off
        else:
            key = (a_bits, w_bits, _bucket(m), n, k, out_dtype, bias is not None, a.device.index)
            fallback = dict(cands[0], expand=True, SWAP=False) if 4 in (a_bits, w_bits) else None
            config = _choose(key, cands, run, fallback)
    run(config)
    return out
