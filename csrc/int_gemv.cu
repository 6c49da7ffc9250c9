// Integer GEMV / skinny GEMM for decode, M = 1..16: W4A8 (int8 activations) and W4A4 (packed
// int4 activations) against the half-block-paired int4 weights of modaq.formats.pack_w4_sym,
// and W8A8 against the row-major int8 weights of modaq.formats.pack_w8.
//
//   y[m, n] = (fp32(sum_k xq[m, k] * wq[n, k]) * x_scale[m]) * w_scale[n] (+ bias[n])
//
// the reference's operations in its order (no FMA contraction), so the output is bit-identical
// to modaq.ops.reference: the int32 sums are exact.
//
// Why a separate kernel: at M <= 16 the product reads N * K / 2 bytes of weights and does
// almost no math, so it must stream weights at DRAM speed; the Triton int GEMM tiles for large
// M (one CTA per 16-32 rows, no K split) reach 0.2-1.1x of FP16 cuBLAS there.
//
// Math.  mma.m16n8k32 with A = 16 weight rows x 32 k (u8 for int4, s8 for int8 weights) and
// B = 32 k x 8 tokens (s8).  A packed int4 word holds 8 two's-complement nibbles;
// (w & 0x0F0F0F0F) ^ 0x08080808 (one LOP3) turns its low nibbles into 4 bytes u = v + 8 in
// [0, 15] (unsigned), the high nibbles after a shift: so acc = sum x (v + 8), and the kernel
// subtracts 8 * sum_k x (summed from the same B registers with dp4a).  int4 activations are
// sign-extended into s8 bytes the SWAR way.
//
// Measured on an H200 (benchmarks/results/int_gemm_NVIDIA_H200.md): W4A8 at M = 1 2.7-3.0x FP16
// cuBLAS on the four large 7B shapes (~2.86 TB/s of weights on 3584 x 18944, 70% of the copy
// kernel's 4.13 TB/s; ncu: stalls mostly long scoreboard, ~16 warps per SM), 1.8-2.2x at M = 16;
// the small shapes (3584 x 3584: 5.4 us) are bound by the per-call latency, not bandwidth.
//
// Layout and k order.  A paired block is 128 values in 64 bytes per row: byte j holds value j
// (low nibble) and j + 64 (high).  Lane (g, t) loads bytes [16t, 16t + 16) of rows g and g + 8
// of a 16-row tile: their low nibbles are k = 16t .. 16t + 15, the high ones 64 + 16t ..; the
// four mma k-steps of a block take (low words 0-1, 2-3, high 0-1, 2-3), and the B registers of
// lane (g, t) are x[token g] at the same k (16 contiguous int8 each, or the same 16 packed
// bytes for int4 activations).  The order of k inside an mma is free as long as A and B agree,
// and here it depends on t only.  The short last block (L = K mod 128 values, byte j = values j
// and j + L/2) is read byte-wise with zeros past its end; x is zero there, so they add nothing.
// int8 weights: a block is 64 k in 64 bytes, lane (g, t) takes k = 16t .. 16t + 15 (two k-steps).
//
// Work split.  A CTA owns one 16-row tile; its warps split the full blocks into contiguous
// ranges (each warp's loads stay in whole 128-byte lines), issue kDepth blocks of loads before
// using them, and meet in shared memory (fixed order: deterministic).  The host picks the warp
// count so that all CTAs are resident at once.  Weights stream past L1 (ld.global.nc,
// no-allocate); x is tiny and shared by every CTA, so it stays in L1.  Tried and dropped: a
// programmatic dependent launch after quantize_act (weights loaded before waiting for x) made
// the large shapes 10-35% slower on an H200, alone and behind quantize_act.  Also dropped:
// loading x at use (it is L1-resident) to keep 8 blocks of weights in flight: 1.4x slower at
// M = 1, x's L1 latency no longer hidden.  What limits M = 16 (ncu, 3584 x 18944): at 128
// registers only 8 two-warp CTAs fit an SM, so the rule picks one warp per CTA: ~8.6 warps
// per SM, DRAM 34% busy, stalls mostly on the weight loads (long scoreboard).
//
// Fused variant (int_gemv_fused, modaq::int_linear at decode sizes): x arrives as fp16 / bf16
// and every CTA quantizes all of it into shared memory first (quantize_x_shared: quantize_act's
// fp32 operations, so still bit-identical), while its first batch of weight loads is in
// flight; this saves the quantize_act launch.  The work repeats per CTA, so it pays only when
// an SM holds little of it: ceil(CTAs / SMs) * M * K <= 16384 (the host rule, in
// modaq.ops.fast_int_gemm).  H200, W4A8 layer, M = 1: 3584 x 3584 7.4 us (quantize_act + GEMV
// 8.8), 4096 x 4096 8.0 (9.5), 1152 x 4304 5.5 (6.6); 3584 x 18944 (9 CTAs per SM) 25.1 against
// 16.6, so the large shapes keep two kernels.  int4 activations stay bytes in [-7, 7] in shared
// memory: the A8 path multiplies them, with no packing.
#include "quantize_act_common.cuh"

#include <stdexcept>

namespace modaq {
namespace {

constexpr int kBlockBytes = 64;  // weight bytes per row per block: 128 int4 or 64 int8 values
constexpr int kDepth = 4;        // blocks of loads in flight per warp
constexpr int kMaxWarps = 16;

template <int WB>
constexpr int block_values() { return WB == 4 ? 128 : 64; }  // 128 = modaq.formats.PAIR_BLOCK

struct IntGemvArgs {
  const uint8_t* x;     // int8 [M, K] (A8) or packed int4 [M, K/2] (A4)
  const float* x_scale;  // [M]
  const uint8_t* w;     // packed int4 [N, K/2] or int8 [N, K]
  const float* w_scale;  // [N]
  const void* bias;     // [N] or null
  int bias_dtype;
  void* y;              // [M, N]
  int M, N, K;
  int full_blocks;      // K / block_values
  int tail;             // K % block_values (even)
  // fused variant (int_gemv_fused): fp16 / bf16 x [M, K] quantized by every CTA into shared
  // memory, with quantize_act's optional smoothing and clip ratio; qmax 127 (A8) or 7 (A4)
  const void* xf;
  const float* smooth;
  float clip;
  int qmax;
};

template <bool UNSIGNED_A>
__device__ __forceinline__ void mma_k32(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        uint32_t b0, uint32_t b1) {
  if constexpr (UNSIGNED_A) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// (w & mask) ^ x in one LOP3
__device__ __forceinline__ uint32_t and_xor(uint32_t w, uint32_t mask, uint32_t x) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0x6A;" : "=r"(d) : "r"(w), "r"(mask), "r"(x));
  return d;
}
// low / high nibbles of a packed word as 4 bytes v + 8 (unsigned)
__device__ __forceinline__ uint32_t lo_u8(uint32_t w) { return and_xor(w, 0x0F0F0F0Fu, 0x08080808u); }
__device__ __forceinline__ uint32_t hi_u8(uint32_t w) { return and_xor(w >> 4, 0x0F0F0F0Fu, 0x08080808u); }
// ... as 4 signed bytes v: ((v + 8) | 0x80) - 8 has no borrow between bytes, then drop the 0x80
__device__ __forceinline__ uint32_t lo_s8(uint32_t w) { return (and_xor(w, 0x0F0F0F0Fu, 0x88888888u) - 0x08080808u) ^ 0x80808080u; }
__device__ __forceinline__ uint32_t hi_s8(uint32_t w) { return lo_s8(w >> 4); }

// Where x comes from: global memory (cached, it is tiny and shared by every CTA) or the CTA's
// shared-memory copy quantized by the fused kernel (rows 16-byte aligned: K % 16 == 0).
enum class XSrc { kGlobal, kShared };

// 16 bytes at p: one vector load when 16-byte aligned, else two 8-byte loads.
template <bool VEC16, bool STREAM, XSrc SRC = XSrc::kGlobal>
__device__ __forceinline__ uint4 load16(const uint8_t* p) {
  if constexpr (SRC == XSrc::kShared) {
    return *reinterpret_cast<const uint4*>(p);
  } else if constexpr (VEC16) {
    if constexpr (STREAM) return ld_stream(p);
    else return __ldg(reinterpret_cast<const uint4*>(p));
  } else {
    const uint2 a = __ldg(reinterpret_cast<const uint2*>(p)), b = __ldg(reinterpret_cast<const uint2*>(p) + 1);
    return make_uint4(a.x, a.y, b.x, b.y);
  }
}

// Bytes p[i] for i < n (n <= 16), zeros after: the short last block.
__device__ __forceinline__ uint4 load_partial(const uint8_t* p, int n) {
  uint32_t v[4] = {0u, 0u, 0u, 0u};
  for (int i = 0; i < n; ++i) v[i >> 2] |= static_cast<uint32_t>(p[i]) << (8 * (i & 3));
  return make_uint4(v[0], v[1], v[2], v[3]);
}

// One block's operands of one lane: the weight bytes of rows g and g + 8, and per token tile
// the B bytes: lo = x at k = 16t .., hi = x at the high-nibble k (s8 words; int4 weights only).
template <int MT>
struct BlockOps {
  uint4 w[2];
  uint4 lo[MT], hi[MT];
};

__device__ __forceinline__ void unpack_a4(const uint4& v, uint4& lo, uint4& hi) {
  lo = make_uint4(lo_s8(v.x), lo_s8(v.y), lo_s8(v.z), lo_s8(v.w));
  hi = make_uint4(hi_s8(v.x), hi_s8(v.y), hi_s8(v.z), hi_s8(v.w));
}

template <int MT, int WB>
__device__ __forceinline__ void mma_block(const BlockOps<MT>& b, int (&acc)[MT][4], int (&xsum)[MT]) {
  const uint32_t* wg = reinterpret_cast<const uint32_t*>(&b.w[0]);
  const uint32_t* wh = reinterpret_cast<const uint32_t*>(&b.w[1]);
  constexpr int kSteps = WB == 4 ? 4 : 2;
  uint32_t a[2][8];  // [row half][k-step * 2 + reg]: int4: lo words 0..3 then hi words 0..3
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    if constexpr (WB == 4) {
      a[0][q] = lo_u8(wg[q]);
      a[1][q] = lo_u8(wh[q]);
      a[0][4 + q] = hi_u8(wg[q]);
      a[1][4 + q] = hi_u8(wh[q]);
    } else {
      a[0][q] = wg[q];
      a[1][q] = wh[q];
    }
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const uint32_t* l = reinterpret_cast<const uint32_t*>(&b.lo[mt]);
    const uint32_t* h = reinterpret_cast<const uint32_t*>(&b.hi[mt]);
    const uint32_t bx[8] = {l[0], l[1], l[2], l[3], h[0], h[1], h[2], h[3]};
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      mma_k32<WB == 4>(acc[mt], a[0][2 * s], a[1][2 * s], a[0][2 * s + 1], a[1][2 * s + 1], bx[2 * s], bx[2 * s + 1]);
    }
    if constexpr (WB == 4) {  // sum x for the v + 8 correction
#pragma unroll
      for (int i = 0; i < 8; ++i) xsum[mt] = __dp4a(static_cast<int>(bx[i]), 0x01010101, xsum[mt]);
    }
  }
}

template <int MT, bool VEC16>
__device__ __forceinline__ void load_weights(const uint8_t* w0, const uint8_t* w1, int kb, BlockOps<MT>& b) {
  b.w[0] = load16<VEC16, true>(w0 + kb * kBlockBytes);
  b.w[1] = load16<VEC16, true>(w1 + kb * kBlockBytes);
}

template <int MT, int WB, bool A4, bool VEC16, XSrc SRC>
__device__ __forceinline__ void load_x(const uint8_t* const (&xrow)[MT], int kb, BlockOps<MT>& b) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    if (xrow[mt] == nullptr) {
      b.lo[mt] = b.hi[mt] = make_uint4(0u, 0u, 0u, 0u);
    } else if constexpr (A4) {
      unpack_a4(load16<VEC16, false>(xrow[mt] + kb * kBlockBytes), b.lo[mt], b.hi[mt]);
    } else {
      constexpr int kv = block_values<WB>();
      b.lo[mt] = load16<true, false, SRC>(xrow[mt] + kb * kv);
      if constexpr (WB == 4) b.hi[mt] = load16<true, false, SRC>(xrow[mt] + kb * kv + kv / 2);
    }
  }
}

// The short last block of p.tail values.  int4: byte j < L/2 holds values j and j + L/2.
template <int MT, int WB, bool A4>
__device__ __forceinline__ void load_tail(const IntGemvArgs& p, const uint8_t* w0, const uint8_t* w1,
                                          const uint8_t* const (&xrow)[MT], int t, BlockOps<MT>& b) {
  constexpr int kv = block_values<WB>();
  const int bytes = WB == 4 ? p.tail / 2 : p.tail, kb = p.full_blocks;
  const int n = max(0, min(16, bytes - 16 * t));  // this lane's valid bytes (w0, w1, xrow already at 16t)
  b.w[0] = load_partial(w0 + kb * kBlockBytes, n);
  b.w[1] = load_partial(w1 + kb * kBlockBytes, n);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    b.lo[mt] = b.hi[mt] = make_uint4(0u, 0u, 0u, 0u);
    if (xrow[mt] == nullptr) continue;
    if constexpr (A4) {
      unpack_a4(load_partial(xrow[mt] + kb * kBlockBytes, n), b.lo[mt], b.hi[mt]);
    } else {
      b.lo[mt] = load_partial(xrow[mt] + kb * kv, n);
      if constexpr (WB == 4) b.hi[mt] = load_partial(xrow[mt] + kb * kv + bytes, n);  // high values from L/2
    }
  }
}

// Fused variant: quantize x [M, K] per token into xs (int8 [M][K]; int4 activations stay
// unpacked bytes in [-7, 7], so the A8 path multiplies them) and the token scales into
// scale_s, with the fp32 operations of quantize_act (bit-identical).  Every CTA quantizes
// all of x: at decode sizes (M * K <= kMaxFusedX) that is a few KB of L2 reads per CTA, and it
// saves the separate quantize_act launch.  Work unit = (token, slice): each token is split
// into `slices` warp-sized strided slices so all warps work at once and tokens proceed in
// parallel (a token-by-token loop paid two memory round trips per token); two passes over
// x (absmax, then quantize; the second hits L1) with one barrier between them.
template <typename T>
__device__ void quantize_x_shared(const IntGemvArgs& p, int8_t* xs, float* scale_s) {
  __shared__ float amax_s[16][kMaxWarps];  // [token][slice]
  __shared__ int nan_s[16][kMaxWarps];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const int slices = max(1, warps / p.M), units = p.M * slices;
  const int nvec = p.K >> 3;  // 8 values per 16-byte vector
  const uint4* x = static_cast<const uint4*>(p.xf);
  for (int u = warp; u < units; u += warps) {
    const int m = u / slices, sl = u - m * slices;
    float amax = 0.f;
    int nan = 0;
#pragma unroll 4
    for (int v = sl * 32 + lane; v < nvec; v += slices * 32) {
      float f[8];
      smoothed8<T>(__ldg(x + static_cast<size_t>(m) * nvec + v), p.smooth, static_cast<int64_t>(v) * 8, f);
#pragma unroll
      for (int j = 0; j < 8; ++j) { nan |= f[j] != f[j]; amax = fmaxf(amax, fabsf(f[j])); }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      nan |= __shfl_xor_sync(0xffffffffu, nan, o);
    }
    if (lane == 0) { amax_s[m][sl] = amax; nan_s[m][sl] = nan; }
  }
  __syncthreads();
  for (int u = warp; u < units; u += warps) {
    const int m = u / slices, sl = u - m * slices;
    float amax = 0.f;
    int nan = 0;
    for (int s = 0; s < slices; ++s) { amax = fmaxf(amax, amax_s[m][s]); nan |= nan_s[m][s]; }
    amax = clipped_range(amax, p.clip);
    if (sl == 0 && lane == 0) scale_s[m] = token_scale(amax, nan, p.qmax);
    const float inv = inv_scale(amax, nan, p.qmax);
#pragma unroll 4
    for (int v = sl * 32 + lane; v < nvec; v += slices * 32) {
      float f[8];
      smoothed8<T>(__ldg(x + static_cast<size_t>(m) * nvec + v), p.smooth, static_cast<int64_t>(v) * 8, f);
      *reinterpret_cast<uint2*>(xs + static_cast<size_t>(m) * p.K + v * 8) = quantize8(f, inv, p.qmax);
    }
  }
  __syncthreads();
}

// The contiguous range [kb0, kb1) of full blocks that warp `warp` of `warps` streams.
__device__ __forceinline__ void warp_blocks(int full_blocks, int warps, int warp, int& kb0, int& kb1) {
  const int per = (full_blocks + warps - 1) / warps;
  kb0 = warp * per;
  kb1 = min(full_blocks, kb0 + per);
}

// FUSED: x arrives as fp16 / bf16 (type TOut) and is quantized by quantize_x_shared first.
template <typename TOut, int MT, int WB, bool A4, bool VEC16, bool FUSED>
__global__ void __launch_bounds__(kMaxWarps * 32) int_gemv_kernel(const IntGemvArgs p) {
  static_assert(!(FUSED && A4), "the fused kernel keeps int4 activations as bytes (A8 path)");
  constexpr XSrc kXSrc = FUSED ? XSrc::kShared : XSrc::kGlobal;
  __shared__ int red[kMaxWarps][MT * 4][32];
  __shared__ float scale_s[16];
  extern __shared__ __align__(16) int8_t xs[];  // fused: quantized x [M][K]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int warps = blockDim.x >> 5;
  const int n0 = blockIdx.x * 16;
  // rows past N re-read row N - 1 (never stored)
  const size_t row_bytes = WB == 4 ? static_cast<size_t>(p.K) / 2 : static_cast<size_t>(p.K);
  const uint8_t* w0 = p.w + static_cast<size_t>(min(n0 + g, p.N - 1)) * row_bytes + 16 * t;
  const uint8_t* w1 = p.w + static_cast<size_t>(min(n0 + g + 8, p.N - 1)) * row_bytes + 16 * t;
  const float* x_scale = p.x_scale;
  const uint8_t* x_base = p.x;
  BlockOps<MT> first[kDepth];  // fused: the first batch of weights, in flight while x is quantized
  if constexpr (FUSED) {
    int kb0, kb1;
    warp_blocks(p.full_blocks, warps, warp, kb0, kb1);
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      if (kb0 + d < kb1) load_weights<MT, VEC16>(w0, w1, kb0 + d, first[d]);
      if (kb0 + kDepth + d < kb1) {  // and the second batch towards L2
        prefetch_l2(w0 + (kb0 + kDepth + d) * kBlockBytes);
        prefetch_l2(w1 + (kb0 + kDepth + d) * kBlockBytes);
      }
    }
    quantize_x_shared<TOut>(p, xs, scale_s);
    x_scale = scale_s;
    x_base = reinterpret_cast<const uint8_t*>(xs);
  }
  const size_t x_row_bytes = A4 ? static_cast<size_t>(p.K) / 2 : static_cast<size_t>(p.K);
  const uint8_t* xrow[MT];  // this lane's B column: token mt * 8 + g, at k = 16t (null: no token)
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int m = mt * 8 + g;
    xrow[mt] = m < p.M ? x_base + m * x_row_bytes + 16 * t : nullptr;
  }

  int acc[MT][4], xsum[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    xsum[mt] = 0;
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[mt][c] = 0;
  }
  // computed here, not at the top: hoisted there, ptxas gave the kernel 106 registers instead of
  // 104 and 3584 x 18944 M = 1 ran 13.2 us instead of 11.9 (H200; the warp rule then picked 1)
  int kb0, kb1;
  warp_blocks(p.full_blocks, warps, warp, kb0, kb1);
  for (int kb = kb0; kb < kb1; kb += kDepth) {
    BlockOps<MT> ops[kDepth];
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      if (kb + d < kb1) {
        if (FUSED && kb == kb0) {
          ops[d].w[0] = first[d].w[0];
          ops[d].w[1] = first[d].w[1];
        } else {
          load_weights<MT, VEC16>(w0, w1, kb + d, ops[d]);
        }
        load_x<MT, WB, A4, VEC16, kXSrc>(xrow, kb + d, ops[d]);
      }
    }
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      if (kb + d < kb1) mma_block<MT, WB>(ops[d], acc, xsum);
    }
  }
  if (p.tail && warp == warps - 1) {
    BlockOps<MT> tail;
    load_tail<MT, WB, A4>(p, w0, w1, xrow, t, tail);
    mma_block<MT, WB>(tail, acc, xsum);
  }

  if constexpr (WB == 4) {
    // acc = sum x (v + 8): subtract 8 * sum x of the accumulator's token (column 2t / 2t + 1)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      int s = xsum[mt];  // token g's partial sum over this lane's k
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      const int s_even = __shfl_sync(0xffffffffu, s, 8 * t), s_odd = __shfl_sync(0xffffffffu, s, 8 * t + 4);
      acc[mt][0] -= 8 * s_even;
      acc[mt][1] -= 8 * s_odd;
      acc[mt][2] -= 8 * s_even;
      acc[mt][3] -= 8 * s_odd;
    }
  }
  if (warps > 1) {
#pragma unroll
    for (int i = 0; i < MT * 4; ++i) red[warp][i][lane] = acc[i / 4][i % 4];
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int i = 0; i < MT * 4; ++i) {
      int v = 0;
      for (int w = 0; w < warps; ++w) v += red[w][i][lane];
      acc[i / 4][i % 4] = v;
    }
  }
  TOut* y = static_cast<TOut*>(p.y);
#pragma unroll
  for (int i = 0; i < MT * 4; ++i) {
    const int n = n0 + g + 8 * ((i % 4) >> 1);
    const int m = (i / 4) * 8 + 2 * t + (i & 1);
    if (n < p.N && m < p.M) {
      float v = __fmul_rn(__fmul_rn(static_cast<float>(acc[i / 4][i % 4]), x_scale[m]), p.w_scale[n]);
      if (p.bias) v = __fadd_rn(v, load_bias(p.bias, p.bias_dtype, n));
      y[static_cast<size_t>(m) * p.N + n] = from_float<TOut>(v);
    }
  }
}

// Warps per CTA (auto): the most (a power of two <= 16, <= the full blocks) for which the
// N / 16 CTAs still fit on the GPU at once.  Measured on an H200 (int_gemm_*.md): one wave of
// CTAs with as many warps as fit splits K best; a second partial wave costs up to 1.4x.
// Residency: resident_ctas (common.cuh; the fused kernel's cached per KB of x).
template <typename Kernel>
int auto_warps(Kernel kernel, int n_tiles, int full_blocks, size_t smem, int device) {
  int w = kMaxWarps;
  while (w > 1 && w > full_blocks) w /= 2;
  for (; w > 1; w /= 2) {
    if (static_cast<int64_t>(resident_ctas(kernel, w, smem)) * device_info(device).sms >= n_tiles) break;
  }
  return w;
}

constexpr int kMaxFusedX = 32 * 1024;  // fused kernel: M * K bytes of quantized x in shared memory

template <typename TOut, int MT, int WB, bool A4, bool VEC16, bool FUSED>
void launch(const IntGemvArgs& p, int warps, int device, cudaStream_t s) {
  auto kernel = int_gemv_kernel<TOut, MT, WB, A4, VEC16, FUSED>;
  const int n_tiles = (p.N + 15) / 16;
  const size_t smem = FUSED ? static_cast<size_t>(p.M) * p.K : 0;
  static bool opted_in[64] = {};
  if (FUSED && !opted_in[device]) {  // static + dynamic shared memory may pass 48 KB
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxFusedX),
               "int_gemv_fused smem attribute");
    opted_in[device] = true;
  }
  if (warps == 0) warps = auto_warps(kernel, n_tiles, p.full_blocks, smem, device);
  kernel<<<n_tiles, warps * 32, smem, s>>>(p);
}

template <typename TOut, int MT, int WB, bool A4, bool FUSED = false>
void launch_aligned(const IntGemvArgs& p, int warps, int device, cudaStream_t s) {
  // int4 rows (weights, int4 x) are 16-byte aligned when K % 32 == 0, else 8-byte (K % 16 == 0)
  if (WB == 8 || p.K % 32 == 0) launch<TOut, MT, WB, A4, true, FUSED>(p, warps, device, s);
  else launch<TOut, MT, WB, A4, false, FUSED>(p, warps, device, s);
}

void check_gemv_args(const char* fn, int64_t M, int64_t K, int a_bits, int w_bits, int warps) {
  // the message is built only on failure: this runs on every decode call
  auto fail = [fn](const char* what) { throw std::invalid_argument(std::string("modaq._C.") + fn + ": " + what); };
  if (M < 1 || M > 16) fail("M must be in 1..16");
  if (K < 16 || K % 16 != 0) fail("K must be a positive multiple of 16");
  const bool ok_bits = (w_bits == 4 && (a_bits == 4 || a_bits == 8)) || (w_bits == 8 && a_bits == 8);
  if (!ok_bits) fail("(a_bits, w_bits) must be (8, 4), (4, 4) or (8, 8)");
  if (warps < 0 || warps > kMaxWarps) fail("warps must be in 0..16");
}

IntGemvArgs gemv_args(std::uintptr_t qweight, std::uintptr_t w_scale, std::uintptr_t bias, int bias_dtype,
                      std::uintptr_t y, int64_t M, int64_t N, int64_t K, int w_bits) {
  IntGemvArgs p{};
  p.w = reinterpret_cast<const uint8_t*>(qweight);
  p.w_scale = reinterpret_cast<const float*>(w_scale);
  p.bias = reinterpret_cast<const void*>(bias);
  p.bias_dtype = bias_dtype;
  p.y = reinterpret_cast<void*>(y);
  p.M = static_cast<int>(M);
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  const int kv = w_bits == 4 ? block_values<4>() : block_values<8>();
  p.full_blocks = p.K / kv;
  p.tail = p.K % kv;
  return p;
}

}  // namespace

bool int_gemv_fused_fits(int64_t M, int64_t K) {
  return M >= 1 && M <= 16 && K >= 16 && K % 16 == 0 && M * K <= kMaxFusedX;
}

void int_gemv_fused(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t qweight, std::uintptr_t w_scale,
                    std::uintptr_t bias, int bias_dtype, std::uintptr_t y, int64_t M, int64_t N, int64_t K,
                    int a_bits, int w_bits, int dtype, int warps, int device, std::uintptr_t stream,
                    float clip_ratio) {
  check_gemv_args("int_gemv_fused", M, K, a_bits, w_bits, warps);
  if (!int_gemv_fused_fits(M, K))
    throw std::invalid_argument("modaq._C.int_gemv_fused: M * K must be at most 32768 (x quantized in shared memory)");
  if (N == 0) return;
  IntGemvArgs p = gemv_args(qweight, w_scale, bias, bias_dtype, y, M, N, K, w_bits);
  p.xf = reinterpret_cast<const void*>(x);
  p.smooth = reinterpret_cast<const float*>(smooth);
  p.clip = clip_ratio;
  p.qmax = a_bits == 8 ? 127 : 7;
  cudaStream_t s = enter(device, stream);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (p.M > 8) {
      if (w_bits == 8) launch_aligned<T, 2, 8, false, true>(p, warps, device, s);
      else launch_aligned<T, 2, 4, false, true>(p, warps, device, s);
    } else {
      if (w_bits == 8) launch_aligned<T, 1, 8, false, true>(p, warps, device, s);
      else launch_aligned<T, 1, 4, false, true>(p, warps, device, s);
    }
  });
  check_launch("int_gemv_fused");
}

void int_gemv(std::uintptr_t x, std::uintptr_t x_scale, std::uintptr_t qweight, std::uintptr_t w_scale,
              std::uintptr_t bias, int bias_dtype, std::uintptr_t y, int64_t M, int64_t N, int64_t K,
              int a_bits, int w_bits, int out_dtype, int warps, int device, std::uintptr_t stream) {
  check_gemv_args("int_gemv", M, K, a_bits, w_bits, warps);
  if (N == 0) return;
  IntGemvArgs p = gemv_args(qweight, w_scale, bias, bias_dtype, y, M, N, K, w_bits);
  p.x = reinterpret_cast<const uint8_t*>(x);
  p.x_scale = reinterpret_cast<const float*>(x_scale);
  cudaStream_t s = enter(device, stream);
  auto go = [&](auto tag) {
    using TOut = decltype(tag);
    if (p.M > 8) {
      if (w_bits == 8) launch_aligned<TOut, 2, 8, false>(p, warps, device, s);
      else if (a_bits == 8) launch_aligned<TOut, 2, 4, false>(p, warps, device, s);
      else launch_aligned<TOut, 2, 4, true>(p, warps, device, s);
    } else {
      if (w_bits == 8) launch_aligned<TOut, 1, 8, false>(p, warps, device, s);
      else if (a_bits == 8) launch_aligned<TOut, 1, 4, false>(p, warps, device, s);
      else launch_aligned<TOut, 1, 4, true>(p, warps, device, s);
    }
  };
  switch (out_dtype) {
    case kHalf: go(__half{}); break;
    case kBFloat16: go(__nv_bfloat16{}); break;
    case kFloat: go(float{}); break;
    default: throw std::invalid_argument("modaq._C.int_gemv: out dtype code must be 0, 1 or 2");
  }
  check_launch("int_gemv");
}

}  // namespace modaq
