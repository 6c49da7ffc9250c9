// Register-pipelined fused dequant GEMV (the first W3A16 / W4A16 GEMV), kept for the grids the
// shared-memory pipelined kernel (weight_only_gemv.cuh) cannot run in one wave: mostly
// M >= 4 on wide N, where that kernel's x staging (M rows of its K range in shared memory)
// cuts its CTAs per SM (H100: 3584 x 18944 W3 M = 8 20.5 vs 22.3 us, M = 16 26.2 vs 27.3 us;
// 4096 x 4096 W4 M = 16 12.0 vs 15.8 us), and the fallback when x does not fit at all (this
// kernel stages x in chunks).  Choice: weight_only_gemv_launch.cuh.
//
// Computes  y[M, N] = x[M, K] @ W^T (+ bias),  W[n, k] = (q[n, k] - zero[n, g]) * scale[n, g],
// g = k / GROUP (64 or 128), q 3- or 4-bit; x, y fp16 or bf16; fp32 accumulation.
//
// Work split.  mma.m16n8k16 with A = weights (16 rows of N x 16 k), B = x^T (16 k x 8 tokens;
// MT = 1 tile of 8 tokens for M <= 8, MT = 2 for M <= 16).  One warp owns a 16-row tile of N
// and a range of 256-k packed blocks; a CTA holds 4 warps (64 rows) that share x, staged in
// shared memory (zero padded to 8 MT rows and to the padded K) and read with ldmatrix.  When N
// alone gives too few warps, K is split over the CTAs of a thread-block cluster (sm_90).
//
// Pipeline.  Each lane keeps 3 packed blocks in registers (one decoded while two are in
// flight) and the warp prefetches 2 more blocks into L2.  Limit (SASS): ptxas tracks every
// weight load of every stage on one scoreboard, so the wait for the oldest block also waits
// for the newest: ~2 full memory latencies per 3 blocks.  The shared-memory kernel avoids this
// with cp.async groups; this one wins only where that kernel's x staging costs occupancy.
#pragma once

#include <cooperative_groups.h>

#include <algorithm>

#include "weight_only.cuh"

namespace modaq {
namespace woq {
namespace regs {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kStages = 3;     // packed blocks per lane in registers
constexpr int kL2Ahead = 2;    // further blocks per warp prefetched into L2 (no registers)
constexpr int kMaxSplits = 8;  // portable cluster size

// K-tiles of x staged per shared-memory chunk: 8 MT rows x (kChunkTiles * 256 + 8) elements,
// the +8 (16 bytes) skews rows across banks for ldmatrix; ~33 KB either way.
template <int MT> struct XChunk {
  static constexpr int kTiles = 8 / MT;
  static constexpr int kStride = kTiles * kTileK + 8;
};

template <typename T, int MT>
constexpr size_t gemv_smem_bytes() {
  return MT * 4 * kThreads * sizeof(float) + 8 * MT * XChunk<MT>::kStride * sizeof(T);
}

// x[:, 256 kt .. 256 (kt + count)) -> xs rows 0 .. 8 MT - 1 (rows >= M, k >= K zero).
template <typename T, int MT>
__device__ void stage_x(const GemvArgs& p, T* xs, int kt, int count) {
  constexpr int XS = XChunk<MT>::kStride;
  const T* x = static_cast<const T*>(p.x);
  const int segs = count * kTileK / 8;  // 16-byte segments per row
  __syncthreads();                      // all warps are done with the previous chunk
  for (int i = threadIdx.x; i < 8 * MT * segs; i += kThreads) {
    const int row = i / segs, seg = i - row * segs;
    const int k = kt * kTileK + seg * 8;  // K % 64 == 0: a segment is all in or all out
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (row < p.M && k < p.K) v = __ldg(reinterpret_cast<const uint4*>(x + (size_t)row * p.K + k));
    *reinterpret_cast<uint4*>(xs + row * XS + seg * 8) = v;
  }
  __syncthreads();
}

// One packed block (16 rows x 256 k) of one warp: 4 units, 16 mma k-steps per token tile.
// xs_lane: shared address of this lane's ldmatrix row for this block's k, token tile 0.
template <typename T, int BITS, int GROUP, int MT>
__device__ __forceinline__ void mma_block(const Block<BITS, GROUP>& blk, uint32_t xs_lane, float (&tot)[MT][4]) {
  constexpr int kUnitsPerGroup = GROUP / kUnitK;
  constexpr uint32_t kTokenTileBytes = 8 * XChunk<MT>::kStride * sizeof(T);
  ZeroConsts<T, BITS> zc;
  float acc[MT][4];
#pragma unroll
  for (int u = 0; u < kUnits; ++u) {
    const int j = u / kUnitsPerGroup;
    if (u % kUnitsPerGroup == 0) {
      zc.set(blk.zero(j, 0), blk.zero(j, 1));
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[mt][c] = 0.f;
    }
    uint32_t w[Bits<BITS>::kWords];
    unit_words<BITS>(blk.q, u, w);
    uint32_t a[16];
    decode_unit<T>(w, zc, a);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      uint32_t b[2][4];  // ldmatrix x4: b-registers of k-steps (0, 1) and (2, 3)
      const uint32_t addr = xs_lane + mt * kTokenTileBytes + u * kUnitK * sizeof(T);
      ldmatrix_x4(b[0], addr);
      ldmatrix_x4(b[1], addr + 32 * sizeof(T));
#pragma unroll
      for (int s = 0; s < 4; ++s) mma_m16n8k16<T>(acc[mt], a + 4 * s, &b[s >> 1][2 * (s & 1)]);
    }
    if (u % kUnitsPerGroup == kUnitsPerGroup - 1) {
      const float2 sc = blk.scale(j);  // (row g, row g + 8)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        tot[mt][0] = fmaf(sc.x, acc[mt][0], tot[mt][0]);
        tot[mt][1] = fmaf(sc.x, acc[mt][1], tot[mt][1]);
        tot[mt][2] = fmaf(sc.y, acc[mt][2], tot[mt][2]);
        tot[mt][3] = fmaf(sc.y, acc[mt][3], tot[mt][3]);
      }
    }
  }
}

// Sum the partial results of the cluster's CTAs into rank 0; returns false in other ranks.
template <int MT>
__device__ __forceinline__ bool cluster_reduce(float* red, float (&tot)[MT][4], int splits) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
#pragma unroll
  for (int i = 0; i < MT * 4; ++i) red[i * kThreads + threadIdx.x] = tot[i / 4][i % 4];
  cluster.sync();
  const bool leader = cluster.block_rank() == 0;
  if (leader) {
    for (int r = 1; r < splits; ++r) {
      const float* other = cluster.map_shared_rank(red, r);
#pragma unroll
      for (int i = 0; i < MT * 4; ++i) tot[i / 4][i % 4] += other[i * kThreads + threadIdx.x];
    }
  }
  cluster.sync();  // keep every rank's shared memory alive until the leader has read it
  return leader;
#else
  __trap();  // the host never splits K below sm_90
  return false;
#endif
}

template <typename T, int BITS, int GROUP, int MT>
__global__ void __launch_bounds__(kThreads, MT == 1 ? 4 : 3) weight_only_gemv_kernel(const GemvArgs p) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* red = reinterpret_cast<float*>(smem);
  T* xs = reinterpret_cast<T*>(smem + MT * 4 * kThreads * sizeof(float));
  constexpr int kChunk = XChunk<MT>::kTiles;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rank = blockIdx.x % p.splits;
  const int tile = (blockIdx.x / p.splits) * kWarps + warp;
  const bool active = tile < p.n_tiles;  // idle warps still join the barriers
  const int kt0 = rank * p.kt_per_split;
  const int kt1 = min(p.k_tiles, kt0 + p.kt_per_split);
  // Idle warps stream a valid tile too (results dropped): every load below is unconditional,
  // with its index clamped to the last block, so no load sits behind a branch whose join
  // would force the compiler to wait for it.  That keeps kStages - 1 blocks truly in flight.
  const size_t block0 = (size_t)(active ? tile : p.n_tiles - 1) * p.k_tiles;
  const int last = kt1 - 1;
  // ldmatrix x4: lanes 8i..8i+7 address the 8 token rows of matrix i = (k-step i/2, k-half i%2)
  const uint32_t xs_lane =
      smem_addr(xs + (lane & 7) * XChunk<MT>::kStride + (lane >> 4) * 16 + ((lane >> 3) & 1) * 8);

  float tot[MT][4];
#pragma unroll
  for (int i = 0; i < MT * 4; ++i) tot[i / 4][i % 4] = 0.f;
  Block<BITS, GROUP> blk[kStages];
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) blk[s].load(p.qweight, p.scales, p.zeros, block0 + min(kt0 + s, last), lane);
#pragma unroll
  for (int s = kStages - 1; s < kStages + kL2Ahead - 1; ++s)
    Block<BITS, GROUP>::prefetch(p.qweight, p.scales, p.zeros, block0 + min(kt0 + s, last), lane);

  for (int kt = kt0; kt < kt1; kt += kStages) {
#pragma unroll
    for (int i = 0; i < kStages; ++i) {
      const int k = kt + i;
      blk[(i + kStages - 1) % kStages].load(p.qweight, p.scales, p.zeros, block0 + min(k + kStages - 1, last), lane);
      Block<BITS, GROUP>::prefetch(p.qweight, p.scales, p.zeros, block0 + min(k + kStages + kL2Ahead - 1, last), lane);
      if (k < kt1) {
        const int in_chunk = (k - kt0) % kChunk;
        if (in_chunk == 0) stage_x<T, MT>(p, xs, k, min(kChunk, kt1 - k));
        if (active) mma_block<T, BITS, GROUP, MT>(blk[i], xs_lane + in_chunk * kTileK * sizeof(T), tot);
      }
    }
  }

  if (p.splits > 1 && !cluster_reduce<MT>(red, tot, p.splits)) return;
  if (!active) return;
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

// Split K over a cluster until ~8 warps stream per SM, each CTA keeping >= 2 blocks of K,
// without exceeding one wave of resident CTAs.
inline int auto_splits(int row_blocks, int k_tiles, int sms, int ctas_per_sm) {
  int s = 1;
  while (s < kMaxSplits && row_blocks * kWarps * s < 8 * sms && k_tiles >= 4 * s &&
         row_blocks * s * 2 <= sms * ctas_per_sm)
    s *= 2;
  return s;
}

template <typename T, int BITS, int GROUP, int MT>
void launch_gemv(GemvArgs p, int splits, int device, cudaStream_t stream) {
  auto kernel = weight_only_gemv_kernel<T, BITS, GROUP, MT>;
  constexpr size_t smem = gemv_smem_bytes<T, MT>();
  const int ctas_per_sm = resident_ctas(kernel, kWarps, smem);
  const DeviceInfo info = device_info(device);
  p.n_tiles = (p.N + kTileN - 1) / kTileN;
  p.k_tiles = (p.K + kTileK - 1) / kTileK;
  const int row_blocks = (p.n_tiles + kWarps - 1) / kWarps;
  if (splits <= 0) splits = auto_splits(row_blocks, p.k_tiles, info.sms, std::max(ctas_per_sm, 1));
  if (info.major < 9) splits = 1;  // clusters need sm_90
  splits = std::max(1, std::min({splits, kMaxSplits, p.k_tiles}));
  p.kt_per_split = (p.k_tiles + splits - 1) / splits;
  p.splits = (p.k_tiles + p.kt_per_split - 1) / p.kt_per_split;  // no empty rank
  const dim3 grid(row_blocks * p.splits);
  launch_split_k(kernel, grid, kThreads, smem, stream, p.splits, p);
  check_launch("weight_only_gemv");
}

// Dispatch over group size and token tiles for one dtype and bit width.
template <typename T, int BITS>
void dispatch_gemv(const GemvArgs& p, int group_size, int splits, int device, cudaStream_t stream) {
  const bool small = p.M <= 8;
  if (group_size == 128) {
    small ? launch_gemv<T, BITS, 128, 1>(p, splits, device, stream)
          : launch_gemv<T, BITS, 128, 2>(p, splits, device, stream);
  } else {
    small ? launch_gemv<T, BITS, 64, 1>(p, splits, device, stream)
          : launch_gemv<T, BITS, 64, 2>(p, splits, device, stream);
  }
}

}  // namespace regs
}  // namespace woq
}  // namespace modaq
