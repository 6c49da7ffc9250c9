// Fused dequant GEMV / skinny GEMM of the weight-only formats (W3A16, W4A16), M = 1..16.
//
// Computes  y[M, N] = x[M, K] @ W^T (+ bias),  W[n, k] = (q[n, k] - zero[n, g]) * scale[n, g],
// g = k / GROUP (64 or 128), q 3- or 4-bit; x, y fp16 or bf16; fp32 accumulation.  No
// dequantized weight is ever written: weights go from DRAM to shared memory to registers to
// the tensor cores.
//
// Math.  Per group, the tensor cores sum x[m, k] * (q - zero) over the group's k with exact
// integer-valued fp16 / bf16 operands (see weight_only.cuh) into fp32 accumulators; the
// group's scale then multiplies them:  y = sum_g scale_g * sum_{k in g} x (q - z).  Equal to the
// reference's sum_k x * ((q - z) * scale) up to fp32 summation order.
//
// Work split.  mma.m16n8k16 with A = weights (16 rows of N x 16 k), B = x^T (16 k x 8 tokens;
// MT = 1 tile of 8 tokens for M <= 8, MT = 2 for M <= 16).  One warp owns a 16-row tile of N
// and the CTA's range of 256-k packed blocks; a CTA holds kWarps warps that share x, staged
// once in shared memory (only the M real rows: ldmatrix rows >= M point at a zero row).  K is
// split over the CTAs of a thread-block cluster (sm_90) so the grid has about one CTA per SM
// (weight_only_gemv_launch.cuh); partial sums meet in the leader CTA through distributed
// shared memory (deterministic).
//
// Pipeline.  Each warp streams its blocks through a private ring of STAGES shared-memory
// slots with cp.async (16-byte, L2 256-byte prefetch), STAGES - 1 blocks in flight, and an
// explicit cp.async.wait_group per block.  Each lane copies and later reads only its own bytes
// (weights, and its rows' scales / zeros), so no barrier is needed inside the loop.  Why not
// registers: the previous kernel prefetched into registers and ptxas put every load of every
// stage on one scoreboard, so each wait drained the whole pipeline (latency bound at ~35% of
// copy bandwidth, W3 = W4 time).
//
// Roofline (H100 SXM, ~3.0 TB/s measured copy).  Bytes per weight: 3/8 (W3) or 1/2 (W4) + 3
// bytes per group of 128 for scale + zero.  3584 x 18944 W3 g128: 26.5 MB -> 8.8 us.  SASS per
// 256-k block per lane (128 weights), W3 fp16 M <= 8: 277 instructions (2.2 / weight; decode
// 1.4: one LOP3 into a magic-number mantissa + one HFMA2 per pair), W4 245 (1.9).
//
// Measured (benchmarks/results/weight_only_*.md, M = 1, CUDA-graph replays): H100, 3584 x 18944
// W3 18.5 us (49% of copy bandwidth; previous kernel 22.9-24.5 us), 18944 x 3584 16.5 us (55%),
// 14336 x 4096 14.0 us (56%); W4 52-64%.  H200 (2026-12-01, shallow ring where the grid has
// more CTAs than SMs: weight_only_gemv_launch.cuh): 3584 x 18944 W3 14.2-15.7 us, W4 14.1-15.3
// across runs (was 16.4-17.2 with 5 slots); 40-45% (W3) and 52-60% (W4) of the 4.19 TB/s
// copy on the four large shapes.
// Limits: ~5-6 us per call that do not
// scale with size (3584 x 3584, 2.5 MB, takes 5-6.5 us: launch, first DRAM round trip, x
// staging, tail), and instruction latency: ncu on the H200 (scripts/profile_weight_only_gemv.py,
// 3584 x 18944 W3) counts 5.24 M warp instructions (316 per block and warp), issue slots 36%
// busy with ~8 warps per SM, stalls per issued instruction long scoreboard 0.85, fixed-latency
// wait 0.60, math pipe 0.42; DRAM 34% busy.  Adding warps did not help: a cluster split of 2
// (2x the warps) measured the same, and a row-tile variant tried on 2026-11-30 (one CTA per 16
// rows, warps splitting K, x copied into each ring slot) took 1.1-1.9x this kernel's time (its
// x copies and addressing added ~45% instructions per block).  Four accumulator chains per
// unit instead of two: no change.  Fewer instructions per weight did not help either (tried
// 2026-12-01 on an H200): W4 fed the magic-number pairs MAGIC + v 2^b to the mma undecoded (the
// W4 layout already gives b per row half: 0 for row g, 4 for g + 8 in fp16), the kernel summed
// x per group in the prologue and took (2^(E - b) + z) sum(x) off per group: one LOP3 per pair
// instead of LOP3 + HFMA2, exact enough (1e-5 relative), but M = 1 times moved < 5% (3584 x
// 18944 16.4 vs 17.2 us, W3 moved as much) and M = 4..16 got up to 25% slower (the prologue
// sums).  ncu (3584 x 18944 W4, M = 1): 2.2 warps per scheduler, 59% of cycles with no eligible
// warp, 5.3 cycles per issued instruction, DRAM 39% busy: latency bound with too few warps per
// SM (296 CTAs of 4 warps).  More resident warps did not help either (H200, 2026-12-01, one
// run each, forced): CTAs of 2 or 1 warps instead of 4 (more CTAs, better SM balance: 592 /
// 1184 on 3584 x 18944) took 15.9 / 21.8 us against 14.3 at M = 1 (each CTA stages its own x);
// a K-split kernel on the integer GEMV's skeleton (csrc/int_gemv.cu: a CTA per 16-row tile, its
// warps splitting K, blocks loaded into registers 2 or 3 deep, x staged once per CTA, partial
// sums met in shared memory) took 16.6 us at its best warp count (8) and 20-25 at the count
// that keeps one wave, 1.2-1.5x this kernel on every shape at M = 1 (register loads leave the
// memory latency exposed per batch, where the ring overlaps it).  ncu with the shallow ring
// (3584 x 18944 W3, M = 1, clocks locked by ncu): 4.93 M warp instructions (297 per block and
// warp, ~70% of them the decode), issue slots 53% busy at 8.7 warps per SM, stalls per issued
// instruction: long scoreboard 0.67, wait (fixed latency) 0.65, not selected 0.55, math pipe
// 0.38, dispatch 0.30, barrier 0.23; DRAM 29% busy, L1 / shared 48%.  So the kernel is
// bound by its instruction stream (decode), not by DRAM; W3 and W4 take the same time on the
// large shapes for that reason.  For scale, a torch elementwise kernel moving the weights'
// bytes (half read, half written) reaches 68-75% of the 1 GiB copy bandwidth on the 4 large
// shapes and 38-49% on the small ones (the bench's "streaming floor" table): W4 takes
// 1.28-1.42x that copy's time on the large shapes, W3 1.6-1.7x.
#pragma once

#include <cooperative_groups.h>

#include "weight_only.cuh"

namespace modaq {
namespace woq {

constexpr int kMaxSplits = 8;  // portable cluster size

// One ring slot: a block's weights as the lanes load them, then per lane its (row g, row g + 8)
// scale pairs and zero bytes of the block's groups (lane-private copies: no barrier needed).
template <int BITS, int GROUP>
struct Slot {
  static constexpr int kGroups = kTileK / GROUP;  // 2 or 4
  static constexpr int kWeightBytes = Bits<BITS>::kVecs * 512;
  static constexpr int kLaneScaleBytes = kGroups * 4;
  static constexpr int kLaneZeroBytes = kGroups * 2;
  static constexpr int kScaleOffset = kWeightBytes;
  static constexpr int kZeroOffset = kScaleOffset + 32 * kLaneScaleBytes;
  static constexpr int kBytes = kZeroOffset + 32 * kLaneZeroBytes;
};

template <typename T, int BITS, int GROUP, int MT, int STAGES>
struct GemvConfig {
  static constexpr int kWarps = MT == 1 ? 4 : 8;
  static constexpr int kThreads = kWarps * 32;
  static int row_blocks(int n) { return ((n + kTileN - 1) / kTileN + kWarps - 1) / kWarps; }  // CTAs per K rank
  static constexpr int kRingBytes = kWarps * STAGES * Slot<BITS, GROUP>::kBytes;
  static constexpr int kZeroRowBytes = (kTileK + 8) * sizeof(T);  // covers every in-block offset
  // dynamic shared memory: ring | zero row | x rows [M][kt_per_split * 256 + 8]
  static size_t smem_bytes(int m, int kt_per_split) {
    return kRingBytes + kZeroRowBytes + (size_t)m * x_stride(kt_per_split) * sizeof(T);
  }
  // +8 elements (16 bytes) skew the rows across banks for ldmatrix
  __host__ __device__ static int x_stride(int kt_per_split) { return kt_per_split * kTileK + 8; }
};

// A lane's global sources of one packed block: its 16-byte weight vectors and its rows'
// (g, g + 8) scale / zero pairs ([g][group][row half] per block).  advance(): next block.
template <int BITS, int GROUP>
struct BlockSrc {
  using S = Slot<BITS, GROUP>;
  const uint8_t* q;
  const __half* s;
  const uint8_t* z;
  __device__ __forceinline__ BlockSrc(const GemvArgs& p, size_t block, int lane)
      : q(p.qweight + block * S::kWeightBytes + lane * 16),
        s(p.scales + block * 16 * S::kGroups + (lane >> 2) * 2 * S::kGroups),
        z(p.zeros + block * 16 * S::kGroups + (lane >> 2) * 2 * S::kGroups) {}
  __device__ __forceinline__ void advance(int blocks = 1) {
    q += blocks * S::kWeightBytes;
    s += blocks * 16 * S::kGroups;
    z += blocks * 16 * S::kGroups;
  }
  // cp.async of this lane's bytes into the ring slot at shared address `slot`
  __device__ __forceinline__ void issue(uint32_t slot, int lane) const {
#pragma unroll
    for (int v = 0; v < Bits<BITS>::kVecs; ++v) cp_async16(slot + v * 512 + lane * 16, q + v * 512);
    cp_async_small<S::kLaneScaleBytes>(slot + S::kScaleOffset + lane * S::kLaneScaleBytes, s);
    cp_async_small<S::kLaneZeroBytes>(slot + S::kZeroOffset + lane * S::kLaneZeroBytes, z);
  }
};

// x[:, 256 kt0 .. 256 kt1) -> xs rows 0 .. M - 1 (k >= K zero-filled); every thread copies a share.
template <typename T>
__device__ __forceinline__ void issue_x(const GemvArgs& p, uint32_t xs, int x_stride, int kt0, int kt1, int threads) {
  const T* x = static_cast<const T*>(p.x);
  const int segs = (kt1 - kt0) * (kTileK / 8);  // 16-byte segments per row
  for (int m = 0; m < p.M; ++m) {
    for (int s = threadIdx.x; s < segs; s += threads) {
      const int k = kt0 * kTileK + s * 8;  // K % 64 == 0: a segment is all in or all out
      const bool in = k < p.K;
      cp_async16_zfill(xs + (m * x_stride + s * 8) * sizeof(T), x + (size_t)m * p.K + (in ? k : 0), in ? 16 : 0);
    }
  }
}

// One packed block (16 rows x 256 k) from ring slot `slot`: 4 units, 16 mma k-steps per token
// tile; each unit accumulates into its own fp32 chain (unit parity), summed and scaled per group.  xa[mt]: this lane's ldmatrix row
// address for the block's k (the zero row for tokens >= M).
template <typename T, int BITS, int GROUP, int MT>
__device__ __forceinline__ void mma_slot(const unsigned char* slot, const uint32_t (&xa)[MT], int lane,
                                         float (&tot)[MT][4]) {
  using S = Slot<BITS, GROUP>;
  constexpr int kUnitsPerGroup = GROUP / kUnitK;
  uint4 q[Bits<BITS>::kVecs];
#pragma unroll
  for (int v = 0; v < Bits<BITS>::kVecs; ++v) q[v] = *reinterpret_cast<const uint4*>(slot + v * 512 + lane * 16);
  uint32_t sc[S::kGroups], zw[S::kGroups / 2];
  const unsigned char* ls = slot + S::kScaleOffset + lane * S::kLaneScaleBytes;
  const unsigned char* lz = slot + S::kZeroOffset + lane * S::kLaneZeroBytes;
  if constexpr (S::kGroups == 2) {
    const uint2 v = *reinterpret_cast<const uint2*>(ls);
    sc[0] = v.x; sc[1] = v.y;
    zw[0] = *reinterpret_cast<const uint32_t*>(lz);
  } else {
    const uint4 v = *reinterpret_cast<const uint4*>(ls);
    sc[0] = v.x; sc[1] = v.y; sc[2] = v.z; sc[3] = v.w;
    const uint2 z = *reinterpret_cast<const uint2*>(lz);
    zw[0] = z.x; zw[1] = z.y;
  }
  ZeroConsts<T, BITS> zc;
  float acc[2][MT][4];
#pragma unroll
  for (int u = 0; u < kUnits; ++u) {
    const int j = u / kUnitsPerGroup;
    if (u % kUnitsPerGroup == 0) {
      // zero bytes [group j][row half]: spread byte 2j + rh to both 16-bit halves
      const uint32_t word = zw[j / 2];
      const uint32_t sel_lo = (j & 1) ? 0x4242u : 0x4040u, sel_hi = (j & 1) ? 0x4343u : 0x4141u;
      uint32_t z_lo, z_hi;
      asm("prmt.b32 %0, %1, 0, %2;" : "=r"(z_lo) : "r"(word), "r"(sel_lo));
      asm("prmt.b32 %0, %1, 0, %2;" : "=r"(z_hi) : "r"(word), "r"(sel_hi));
      zc.set_pairs(z_lo, z_hi);
    }
    float (&a_acc)[MT][4] = acc[u & 1];  // each unit starts a fresh chain of 4 mma
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int c = 0; c < 4; ++c) a_acc[mt][c] = 0.f;
    uint32_t w[Bits<BITS>::kWords];
    unit_words<BITS>(q, u, w);
    uint32_t a[16];
    decode_unit<T>(w, zc, a);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      uint32_t b[2][4];  // ldmatrix x4: b-registers of k-steps (0, 1) and (2, 3)
      ldmatrix_x4(b[0], xa[mt] + u * kUnitK * sizeof(T));
      ldmatrix_x4(b[1], xa[mt] + (u * kUnitK + 32) * sizeof(T));
#pragma unroll
      for (int s = 0; s < 4; ++s) mma_m16n8k16<T>(a_acc[mt], a + 4 * s, &b[s >> 1][2 * (s & 1)]);
    }
    if (u % kUnitsPerGroup == kUnitsPerGroup - 1) {
      uint32_t sv = sc[j];
      const float2 f = __half22float2(*reinterpret_cast<__half2*>(&sv));  // (row g, row g + 8)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const float v = kUnitsPerGroup == 2 ? acc[0][mt][c] + acc[1][mt][c] : a_acc[mt][c];
          tot[mt][c] = fmaf(c < 2 ? f.x : f.y, v, tot[mt][c]);
        }
    }
  }
}

// Sum the partial results of the cluster's CTAs into rank 0; returns false in other ranks.
// red: this thread's MT * 4 floats (stride 32) inside its warp's ring, whose copies are done.
template <int MT>
__device__ __forceinline__ bool cluster_reduce(float* red, float (&tot)[MT][4], int splits) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
#pragma unroll
  for (int i = 0; i < MT * 4; ++i) red[i * 32] = tot[i / 4][i % 4];
  cluster.sync();
  const bool leader = cluster.block_rank() == 0;
  if (leader) {
    for (int r = 1; r < splits; ++r) {
      const float* other = cluster.map_shared_rank(red, r);
#pragma unroll
      for (int i = 0; i < MT * 4; ++i) tot[i / 4][i % 4] += other[i * 32];
    }
  }
  cluster.sync();  // keep every rank's shared memory alive until the leader has read it
  return leader;
#else
  __trap();  // the host never splits K below sm_90
  return false;
#endif
}

template <typename T, int MT>
__device__ __forceinline__ void store_tile(const GemvArgs& p, int tile, int lane, const float (&tot)[MT][4]) {
  const int g = lane >> 2, t = lane & 3;
  T* y = static_cast<T*>(p.y);
#pragma unroll
  for (int i = 0; i < MT * 4; ++i) {
    const int mt = i / 4, c = i % 4;
    const int n = tile * kTileN + g + 8 * (c >> 1);
    const int m = mt * 8 + 2 * t + (c & 1);
    if (n < p.N && m < p.M) {
      float v = tot[mt][c];
      if (p.bias) v += load_bias(p.bias, p.bias_dtype, n);
      y[(size_t)m * p.N + n] = from_float<T>(v);
    }
  }
}

template <typename T, int BITS, int GROUP, int MT, int STAGES>
__global__ void __launch_bounds__(GemvConfig<T, BITS, GROUP, MT, STAGES>::kThreads, MT == 1 ? 4 : 2)
    weight_only_gemv_kernel(const GemvArgs p) {
  using C = GemvConfig<T, BITS, GROUP, MT, STAGES>;
  using S = Slot<BITS, GROUP>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rank = blockIdx.x % p.splits;
  const int tile = (blockIdx.x / p.splits) * C::kWarps + warp;
  const bool active = tile < p.n_tiles;  // idle warps still join the barriers
  const int kt0 = rank * p.kt_per_split;
  const int nkt = min(p.k_tiles, kt0 + p.kt_per_split) - kt0;
  const int x_stride = C::x_stride(p.kt_per_split);
  unsigned char* ring = smem + warp * STAGES * S::kBytes;
  const uint32_t ring_s = smem_addr(ring);
  const uint32_t zero_s = smem_addr(smem + C::kRingBytes);
  const uint32_t xs_s = zero_s + C::kZeroRowBytes;
  BlockSrc<BITS, GROUP> src(p, (size_t)tile * p.k_tiles + kt0, lane);

  // Prologue: group 0 = block 0 + this thread's share of x; groups 1 .. STAGES - 2 = blocks
  // 1 .. (empty groups past the range keep the group count uniform).
  if (active) src.issue(ring_s, lane);
  issue_x<T>(p, xs_s, x_stride, kt0, kt0 + nkt, C::kThreads);
  cp_async_commit();
#pragma unroll
  for (int s = 1; s < STAGES - 1; ++s) {
    src.advance();
    if (active && s < nkt) src.issue(ring_s + s * S::kBytes, lane);
    cp_async_commit();
  }
  src.advance();  // now block STAGES - 1, the first one the loop issues
  for (int i = threadIdx.x; i < C::kZeroRowBytes / 16; i += C::kThreads)
    *reinterpret_cast<uint4*>(smem + C::kRingBytes + i * 16) = make_uint4(0u, 0u, 0u, 0u);
  cp_async_wait<STAGES - 2>();
  __syncthreads();  // x and the zero row visible to every warp

  // ldmatrix x4: lanes 8i .. 8i + 7 address the 8 token rows of matrix i = (k-step i / 2,
  // k half i % 2); token rows >= M read the zero row, which never advances with k.
  const uint32_t col = ((lane >> 4) * 16 + ((lane >> 3) & 1) * 8) * sizeof(T);
  uint32_t xbase[MT], xstep[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int row = (lane & 7) + 8 * mt;
    const bool real = row < p.M;
    xbase[mt] = (real ? xs_s + row * x_stride * sizeof(T) : zero_s) + col;
    xstep[mt] = real ? kTileK * sizeof(T) : 0u;
  }

  float tot[MT][4];
#pragma unroll
  for (int i = 0; i < MT * 4; ++i) tot[i / 4][i % 4] = 0.f;
  if (active) {
    constexpr uint32_t kRingLast = (STAGES - 1) * S::kBytes;
    uint32_t slot = 0;  // byte offset of block i's slot in the ring
    for (int i = 0; i < nkt; ++i) {
      cp_async_wait<STAGES - 2>();  // block i has landed (this lane's bytes)
      // block i + STAGES - 1 goes to the slot read in the previous iteration
      if (i + STAGES - 1 < nkt) src.issue(ring_s + (slot == 0 ? kRingLast : slot - S::kBytes), lane);
      src.advance();
      cp_async_commit();
      uint32_t xa[MT];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) xa[mt] = xbase[mt] + i * xstep[mt];
      mma_slot<T, BITS, GROUP, MT>(ring + slot, xa, lane, tot);
      slot = slot == kRingLast ? 0 : slot + S::kBytes;
    }
  }
  cp_async_wait<0>();  // nothing is pending; the ring may now hold the reduction buffer
  if (p.splits > 1 && !cluster_reduce<MT>(reinterpret_cast<float*>(ring) + lane, tot, p.splits)) return;
  if (active) store_tile<T, MT>(p, tile, lane, tot);
}

}  // namespace woq
}  // namespace modaq
