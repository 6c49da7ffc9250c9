// quantize_act with the Kronecker transform (FlatQuant): one pass reads X [M, K] (fp16 / bf16),
// divides by the smoothing vector, applies Y_r = P1^T X_r P2 (X_r: the token as [n1, n2],
// row-major) and writes int8 [M, K] (or packed int4 [M, K/2], half-block paired like
// modaq.formats.pack_a4) + fp32 per-token scales, quantized exactly as quantize_act.cu.
//
// Precision: both products run on the tensor cores in fp16 with every operand split into two
// fp16 terms (hi + lo carry 22 significant bits) and three term pairs (hi hi, hi lo, lo hi)
// accumulated in fp32: ~2^-21 relative to the token's range, the fp32 reference's own order.
// fp16 needs its range managed, with powers of two only (exact): each token is scaled so its
// largest |x / smooth| is at most 2^14; P2 and P1 come pre-scaled to a largest element of
// 2^14 (modaq.ops.fast_activation), Z = X_r P2 is multiplied by 2^-zR (consts[0]) where 2^zR
// bounds P2's column abs-sums, so |Z| <= 2^14 too; Y is multiplied back by consts[1] / s_t.
// q can differ from the fp32 reference by +-1 where a value lies within the transform's
// rounding of a rounding boundary.
//
// Structure: a persistent CTA of 8 warps loops over groups of `tokens` tokens, each through
//   load    X (/ smooth) -> fp32 staging in shared memory, the token's absmax;
//   split   * s_t -> fp16 hi / lo planes [n1p][sx] (zero padding to 16s);
//   stage 1 Z = X_r P2: A fragments by ldmatrix from the planes, B (P2) fragments from global
//           memory (L1-resident), written back as hi / lo planes;
//   stage 2 Y = P1^T Z: A (P1^T) fragments from global, B by ldmatrix.trans from Z's planes;
//           Y in fp32 over X's planes, the token's absmax from the accumulators;
//   quantize the fp32 Y (quantize_tokens).
// Each warp owns MT x NT mma tiles (MT * 16 rows, NT * 8 columns) of a token's [n1p, n2p]
// output, so a fragment loaded once feeds MT or NT products.  Several CTAs per SM overlap one
// group's loads with another's tensor-core work.
//
// Roofline: 2K bytes read + K (K/2) written per token; 6 * (n1p + n2p) tensor-core flops per
// value.  Measured (H200, M = 4096): 64 x 64 128 us (9% of copy), 148 x 128 1139 us; the
// kernel is bound by instruction issue (3.6 warp instructions per value at 64 x 64, 5% of
// them mma): the load, split, both epilogues and the quantize pass, not the products.
#include "quantize_act_transform.cuh"

#include <algorithm>
#include <stdexcept>

namespace modaq {
namespace {

// CTA shape and group size: kThreads / kWarps / kMaxTokens of quantize_act_transform.cuh, whose
// quantize_tokens strides by kThreads.
constexpr size_t kKronGroupBytes = 110 * 1024;  // aim: 2 CTAs per SM where a token allows it
constexpr int kDataMaxExp = 14;  // operands scaled to <= 2^14, clear of fp16's 65504 (mma_fragments.DATA_MAX_EXP)

struct KronParams {
  const void* x;
  const float* smooth;  // [K] or null
  const uint4* left;    // P1''^T as A fragments [rt][ks][2 terms][32 lanes]
  const uint4* right;   // P2'' as B fragments [nt][ks][32 lanes] = {hi b0, hi b1, lo b0, lo b1}
  const float* consts;  // {2^-zR, 2^(zR - cR - cL)}
  uint8_t* q;
  float* scale;
  int64_t M;
  int n1, n2;           // the factors; K = n1 * n2
  int n1p, n2p;         // padded to multiples of 16
  int s;                // row stride of every plane (halves) and of fp32 staging / Y (floats)
  int tokens;           // per group
  int token_stride;     // floats per token in each of the two regions (n1p * s): staging / Z, X / Y
  bool vec;             // n2 % 8 == 0 and 16-byte aligned x / smooth
  float final_scale;    // 1: Y is stored already scaled
  float clip;
};

__host__ __device__ inline int kron_pad(int n) { return (n + 15) / 16 * 16; }
// +8 halves: ldmatrix's eight 16-byte rows land in distinct bank groups, and the fp32 view's
// float2 stores from the accumulators are conflict-free (stride = 8 or 24 mod 32 words).
__host__ __device__ inline int kron_stride(int n2) { return kron_pad(n2) + 8; }
// Bytes of one token: X planes (later Y) + Z planes, 2 planes of fp16 each.
inline size_t kron_token_bytes(int n1, int n2) {
  return static_cast<size_t>(8) * kron_pad(n1) * kron_stride(n2);
}

// acc[m][n] += (a_hi + a_lo)[m] (b_hi + b_lo)[n] without the lo * lo pair, for the tiles
// m < m_valid, n < n_valid; one term pair over all tiles at a time, so that consecutive mma
// do not wait on each other's accumulator.
template <int MT, int NT>
__device__ __forceinline__ void mma_tiles(float (&acc)[MT][NT][4], const uint32_t (&ahi)[MT][4],
                                          const uint32_t (&alo)[MT][4], const uint32_t (&bhi)[NT][2],
                                          const uint32_t (&blo)[NT][2], int m_valid, int n_valid) {
#pragma unroll
  for (int pair = 0; pair < 3; ++pair)
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int n = 0; n < NT; ++n)
        if (m < m_valid && n < n_valid)
          mma_m16n8k16<__half>(acc[m][n], pair == 2 ? alo[m] : ahi[m], pair == 1 ? blo[n] : bhi[n]);
}

// f(row, col, v0, v1) for each accumulator pair of the valid tiles: (row, col) and (row, col + 1)
// of the warp's output, its tiles starting at row tile r0 and n tile c0.
template <int MT, int NT, typename F>
__device__ __forceinline__ void for_each_pair(const float (&acc)[MT][NT][4], int r0, int c0, int m_valid,
                                              int n_valid, F&& f) {
  const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int n = 0; n < NT; ++n)
      if (m < m_valid && n < n_valid) {
#pragma unroll
        for (int h = 0; h < 2; ++h)
          f((r0 + m) * 16 + g + 8 * h, (c0 + n) * 8 + 2 * c, acc[m][n][2 * h], acc[m][n][2 * h + 1]);
      }
}

// v -> (hi, lo) fp16 with hi + lo = v to ~2^-22 relative, for a pair of values.
__device__ __forceinline__ void split_f16x2(float v0, float v1, uint32_t& hi, uint32_t& lo) {
  const __half2 h = __floats2half2_rn(v0, v1);
  const float2 hf = __half22float2(h);
  const __half2 l = __floats2half2_rn(v0 - hf.x, v1 - hf.y);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = *reinterpret_cast<const uint32_t*>(&l);
}

// 2^(14 - e) with amax <= 2^e: the token's values scaled into [-2^14, 2^14]; 1 for a zero or
// non-finite token (the exponent clamped so the factor stays a normal fp32 power of two).
__device__ __forceinline__ float data_scale(float amax) {
  if (!(amax > 0.f) || isinf(amax)) return 1.f;
  int e;
  const float m = frexpf(amax, &e);  // amax = m 2^e, m in [0.5, 1)
  if (m == 0.5f) --e;                // an exact power of two: amax = 2^(e-1)
  return ldexpf(1.f, max(-100, min(100, kDataMaxExp - e)));
}

struct GroupShared {
  unsigned amax_in[kMaxTokens];
  unsigned amax_out[kMaxTokens];
  int nan_out[kMaxTokens];
};

// ---------------------------------------------------------------------------- load + split

// X / smooth of the group's tokens as fp32 [n1][s] per token into `stage`, absmax per token.
// With 16-byte vectors each thread has kLoadBatch loads in flight before it uses one.
constexpr int kLoadBatch = 4;

template <typename T>
__device__ void load_group(const KronParams& p, int64_t row0, float* stage, GroupShared& sh) {
  const int K = p.n1 * p.n2;
  const T* x = static_cast<const T*>(p.x);
  float m = 0.f;
  int cur = 0;  // the token m belongs to; a thread's tokens only increase
  auto flush = [&](int tok) {
    if (tok != cur) {
      if (m > 0.f) atomicMax(sh.amax_in + cur, __float_as_uint(m));  // non-negative floats order as uints
      cur = tok;
      m = 0.f;
    }
  };
  if (p.vec) {
    const int per_token = K / 8, total = p.tokens * per_token;
    for (int base = threadIdx.x; base < total; base += kLoadBatch * kThreads) {
      uint4 raw[kLoadBatch];
#pragma unroll
      for (int u = 0; u < kLoadBatch; ++u) {
        const int idx = base + u * kThreads, tok = idx / per_token;
        if (idx < total && row0 + tok < p.M)
          raw[u] = ld_stream(x + (row0 + tok) * K + static_cast<int64_t>(idx - tok * per_token) * 8);
      }
#pragma unroll
      for (int u = 0; u < kLoadBatch; ++u) {
        const int idx = base + u * kThreads, tok = idx / per_token;
        if (idx >= total || row0 + tok >= p.M) continue;
        const int k = (idx - tok * per_token) * 8;
        float f[8];
        smoothed8<T>(raw[u], p.smooth, k, f);
        flush(tok);
#pragma unroll
        for (int j = 0; j < 8; ++j) m = fmaxf(m, fabsf(f[j]));
        const int i = k / p.n2, j = k - i * p.n2;
        float4* dst = reinterpret_cast<float4*>(stage + static_cast<size_t>(tok) * p.token_stride + i * p.s + j);
        dst[0] = make_float4(f[0], f[1], f[2], f[3]);
        dst[1] = make_float4(f[4], f[5], f[6], f[7]);
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < p.tokens * K; idx += kThreads) {
      const int tok = idx / K, k = idx - tok * K;
      if (row0 + tok >= p.M) break;
      float v = to_float(x[(row0 + tok) * K + k]);
      if (p.smooth) v = v / p.smooth[k];
      flush(tok);
      m = fmaxf(m, fabsf(v));
      const int i = k / p.n2;
      stage[static_cast<size_t>(tok) * p.token_stride + i * p.s + (k - i * p.n2)] = v;
    }
  }
  flush(-1);
}

// Staged fp32 * s_t -> hi / lo fp16 planes over the whole padded [n1p][n2p] (zeros outside).
__device__ void split_group(const KronParams& p, int64_t row0, const float* stage, __half* xplanes,
                            const GroupShared& sh) {
  const int chunks = p.n2p / 8, per_token = p.n1p * chunks;
  int sc_tok = -1;
  float sc = 1.f;
  for (int idx = threadIdx.x; idx < p.tokens * per_token; idx += kThreads) {
    const int tok = idx / per_token, rem = idx - tok * per_token;
    const int i = rem / chunks, j = (rem - i * chunks) * 8;
    const float* st = stage + static_cast<size_t>(tok) * p.token_stride + i * p.s + j;
    if (tok != sc_tok) {
      sc = data_scale(__uint_as_float(sh.amax_in[tok]));
      sc_tok = tok;
    }
    const bool live = row0 + tok < p.M && i < p.n1;
    float v[8];
    if (live && j + 8 <= p.n2) {  // one 32-byte run: two 16-byte reads (8 scalar ones conflict 8-way)
      const float4 u = reinterpret_cast<const float4*>(st)[0], w = reinterpret_cast<const float4*>(st)[1];
      v[0] = u.x * sc; v[1] = u.y * sc; v[2] = u.z * sc; v[3] = u.w * sc;
      v[4] = w.x * sc; v[5] = w.y * sc; v[6] = w.z * sc; v[7] = w.w * sc;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = (live && j + e < p.n2) ? st[e] * sc : 0.f;
    }
    uint4 hi, lo;
    split_f16x2(v[0], v[1], hi.x, lo.x);
    split_f16x2(v[2], v[3], hi.y, lo.y);
    split_f16x2(v[4], v[5], hi.z, lo.z);
    split_f16x2(v[6], v[7], hi.w, lo.w);
    __half* plane = xplanes + static_cast<size_t>(tok) * 2 * p.token_stride;
    *reinterpret_cast<uint4*>(plane + i * p.s + j) = hi;
    *reinterpret_cast<uint4*>(plane + (p.n1p + i) * p.s + j) = lo;
  }
}

// ------------------------------------------------------------------------ the two products

// Stage 1, Z = X_r P2 for every (token, MT x NT tile), Z * 2^-zR stored as hi / lo planes.
template <int MT, int NT>
__device__ void right_products(const KronParams& p, const __half* xplanes, __half* zplanes) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rt_n = p.n1p / 16, nt_n = p.n2p / 8, ks_n = p.n2p / 16;
  const int tr_n = (rt_n + MT - 1) / MT, tc_n = (nt_n + NT - 1) / NT, tiles = tr_n * tc_n;
  const size_t token_halves = static_cast<size_t>(2) * p.token_stride;
  const float z_scale = __ldg(p.consts);
  for (int unit = warp; unit < p.tokens * tiles; unit += kWarps) {
    const int tok = unit / tiles, tile = unit - tok * tiles;
    const int r0 = (tile / tc_n) * MT, c0 = (tile % tc_n) * NT;
    const __half* xh = xplanes + tok * token_halves;
    const __half* a_ptr = xh + (r0 * 16 + (lane & 15)) * p.s + (lane >> 4) * 8;
    const uint4* b_src = p.right + static_cast<size_t>(c0) * ks_n * 32 + lane;
    const int m_valid = rt_n - r0, n_valid = nt_n - c0;
    float acc[MT][NT][4] = {};
    uint4 b_next[NT];  // P2's fragments one k step ahead: they come from L1 / L2
#pragma unroll
    for (int n = 0; n < NT; ++n)
      if (n < n_valid) b_next[n] = __ldg(b_src + n * ks_n * 32);
    for (int ks = 0; ks < ks_n; ++ks) {
      uint32_t bhi[NT][2], blo[NT][2];
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        bhi[n][0] = b_next[n].x; bhi[n][1] = b_next[n].y; blo[n][0] = b_next[n].z; blo[n][1] = b_next[n].w;
      }
      if (ks + 1 < ks_n) {
#pragma unroll
        for (int n = 0; n < NT; ++n)
          if (n < n_valid) b_next[n] = __ldg(b_src + (n * ks_n + ks + 1) * 32);
      }
      uint32_t ahi[MT][4], alo[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m < m_valid) {
          ldmatrix_x4(ahi[m], a_ptr + m * 16 * p.s + ks * 16);
          ldmatrix_x4(alo[m], a_ptr + (p.n1p + m * 16) * p.s + ks * 16);
        }
      }
      mma_tiles<MT, NT>(acc, ahi, alo, bhi, blo, m_valid, n_valid);
    }
    __half* zh = zplanes + tok * token_halves;
    for_each_pair(acc, r0, c0, m_valid, n_valid, [&](int row, int col, float v0, float v1) {
      uint32_t hi, lo;
      split_f16x2(v0 * z_scale, v1 * z_scale, hi, lo);
      *reinterpret_cast<uint32_t*>(zh + row * p.s + col) = hi;
      *reinterpret_cast<uint32_t*>(zh + (p.n1p + row) * p.s + col) = lo;
    });
  }
}

// Stage 2, Y = P1^T Z for every (token, tile); Y * consts[1] / s_t stored as fp32 over the
// token's X planes (rows < n1), its absmax and NaN flag into sh.
template <int MT, int NT>
__device__ void left_products(const KronParams& p, const __half* zplanes, float* ybuf, GroupShared& sh) {
  static_assert(NT % 2 == 0, "ldmatrix.x4.trans loads two n tiles");
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rt_n = p.n1p / 16, nt_n = p.n2p / 8, ks_n = p.n1p / 16;
  const int tr_n = (rt_n + MT - 1) / MT, tc_n = (nt_n + NT - 1) / NT, tiles = tr_n * tc_n;
  const size_t token_halves = static_cast<size_t>(2) * p.token_stride;
  const float out_scale = __ldg(p.consts + 1);
  for (int unit = warp; unit < p.tokens * tiles; unit += kWarps) {
    const int tok = unit / tiles, tile = unit - tok * tiles;
    const int r0 = (tile / tc_n) * MT, c0 = (tile % tc_n) * NT;
    const __half* b_ptr = zplanes + tok * token_halves + (lane & 15) * p.s + (lane >> 4) * 8 + c0 * 8;
    const uint4* a_src = p.left + static_cast<size_t>(r0) * ks_n * 64 + lane;
    const int m_valid = rt_n - r0, n_valid = nt_n - c0;
    float acc[MT][NT][4] = {};
    uint4 a_next[MT][2];  // P1^T's fragments (hi, lo) one k step ahead: they come from L1 / L2
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m < m_valid) {
        a_next[m][0] = __ldg(a_src + m * ks_n * 64);
        a_next[m][1] = __ldg(a_src + m * ks_n * 64 + 32);
      }
    }
    for (int ks = 0; ks < ks_n; ++ks) {
      uint32_t ahi[MT][4], alo[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        ahi[m][0] = a_next[m][0].x; ahi[m][1] = a_next[m][0].y; ahi[m][2] = a_next[m][0].z; ahi[m][3] = a_next[m][0].w;
        alo[m][0] = a_next[m][1].x; alo[m][1] = a_next[m][1].y; alo[m][2] = a_next[m][1].z; alo[m][3] = a_next[m][1].w;
      }
      if (ks + 1 < ks_n) {
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          if (m < m_valid) {
            a_next[m][0] = __ldg(a_src + (m * ks_n + ks + 1) * 64);
            a_next[m][1] = __ldg(a_src + (m * ks_n + ks + 1) * 64 + 32);
          }
        }
      }
      uint32_t bhi[NT][2], blo[NT][2];
#pragma unroll
      for (int n = 0; n < NT; n += 2) {
        if (n < n_valid) {  // n2p is a multiple of 16: the pair's second tile exists too
          uint32_t r[4];
          ldmatrix_x4_trans(r, b_ptr + ks * 16 * p.s + n * 8);
          bhi[n][0] = r[0]; bhi[n][1] = r[1]; bhi[n + 1][0] = r[2]; bhi[n + 1][1] = r[3];
          ldmatrix_x4_trans(r, b_ptr + (p.n1p + ks * 16) * p.s + n * 8);
          blo[n][0] = r[0]; blo[n][1] = r[1]; blo[n + 1][0] = r[2]; blo[n + 1][1] = r[3];
        }
      }
      mma_tiles<MT, NT>(acc, ahi, alo, bhi, blo, m_valid, n_valid);
    }
    const float sc = out_scale / data_scale(__uint_as_float(sh.amax_in[tok]));
    float* y = ybuf + static_cast<size_t>(tok) * p.token_stride;
    float amax = 0.f;
    int nan = 0;
    for_each_pair(acc, r0, c0, m_valid, n_valid, [&](int row, int col, float v0, float v1) {
      if (row >= p.n1) return;
      v0 *= sc;
      v1 *= sc;
      // padded columns hold exact zeros (zero-padded P2), so they do not move the absmax
      amax = fmaxf(amax, fmaxf(fabsf(v0), fabsf(v1)));
      nan |= (v0 != v0) | (v1 != v1);
      *reinterpret_cast<float2*>(y + row * p.s + col) = make_float2(v0, v1);
    });
    for (int o = 16; o > 0; o >>= 1) {
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      nan |= __shfl_xor_sync(0xffffffffu, nan, o);
    }
    if (lane == 0) {
      atomicMax(sh.amax_out + tok, __float_as_uint(amax));
      if (nan) atomicOr(sh.nan_out + tok, 1);
    }
  }
}

// ------------------------------------------------------------------------------- kernel

template <typename T, int BITS, int MT, int NT>
__global__ void __launch_bounds__(kThreads, 2) quantize_act_kron_kernel(KronParams p) {
  extern __shared__ float4 smem[];
  __half* xplanes = reinterpret_cast<__half*>(smem);  // X planes, then Y (fp32)
  __half* zplanes = xplanes + static_cast<size_t>(p.tokens) * 2 * p.token_stride;  // staging, then Z
  __shared__ GroupShared sh;
  const int64_t groups = (p.M + p.tokens - 1) / p.tokens;
  for (int64_t group = blockIdx.x; group < groups; group += gridDim.x) {
    const int64_t row0 = group * p.tokens;
    if (threadIdx.x < kMaxTokens) {
      sh.amax_in[threadIdx.x] = 0u;
      sh.amax_out[threadIdx.x] = 0u;
      sh.nan_out[threadIdx.x] = 0;
    }
    __syncthreads();
    load_group<T>(p, row0, reinterpret_cast<float*>(zplanes), sh);
    __syncthreads();
    split_group(p, row0, reinterpret_cast<const float*>(zplanes), xplanes, sh);
    __syncthreads();
    right_products<MT, NT>(p, xplanes, zplanes);
    __syncthreads();
    left_products<MT, NT>(p, zplanes, reinterpret_cast<float*>(xplanes), sh);
    __syncthreads();
    quantize_tokens<BITS>(p, reinterpret_cast<const float*>(xplanes), row0, sh.amax_out, sh.nan_out);
    __syncthreads();  // Y and sh are free for the next group
  }
}

template <typename T, int BITS, int MT, int NT>
void launch_kron(const KronParams& p, int device, cudaStream_t s) {
  const size_t smem = kron_token_bytes(p.n1, p.n2) * p.tokens;
  launch_persistent(quantize_act_kron_kernel<T, BITS, MT, NT>, (p.M + p.tokens - 1) / p.tokens, kThreads, smem,
                    device, s, p, "quantize_act_kron launch");
}

}  // namespace

bool kron_fits(int n1, int n2, int device) {
  return n1 >= 1 && n2 >= 1 &&
         kron_token_bytes(n1, n2) + sizeof(GroupShared) <= static_cast<size_t>(device_info(device).smem_optin);
}

void quantize_act_kron(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t left, std::uintptr_t right,
                       std::uintptr_t consts, std::uintptr_t q, std::uintptr_t scale, int64_t M, int n1, int n2,
                       int bits, int dtype, int device, std::uintptr_t stream, float clip_ratio) {
  if (M == 0) return;
  if (!kron_fits(n1, n2, device))
    throw std::invalid_argument("modaq._C: Kronecker factors too large for the fused kernel's shared memory");
  cudaStream_t s = enter(device, stream);
  KronParams p{};
  p.x = reinterpret_cast<const void*>(x);
  p.smooth = reinterpret_cast<const float*>(smooth);
  p.left = reinterpret_cast<const uint4*>(left);
  p.right = reinterpret_cast<const uint4*>(right);
  p.consts = reinterpret_cast<const float*>(consts);
  p.q = reinterpret_cast<uint8_t*>(q);
  p.scale = reinterpret_cast<float*>(scale);
  p.M = M;
  p.n1 = n1;
  p.n2 = n2;
  p.n1p = kron_pad(n1);
  p.n2p = kron_pad(n2);
  p.s = kron_stride(n2);
  const size_t per_token = kron_token_bytes(n1, n2);
  const int64_t fit = static_cast<int64_t>(kKronGroupBytes / per_token);
  p.tokens = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({fit, kMaxTokens, M})));
  p.token_stride = p.n1p * p.s;
  auto aligned = [](const void* ptr) { return (reinterpret_cast<std::uintptr_t>(ptr) & 15) == 0; };
  p.vec = (n2 % 8 == 0) && aligned(p.x) && aligned(p.smooth);
  p.final_scale = 1.f;
  p.clip = clip_ratio;
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool narrow = p.n2p == 16;  // one 16-column strip: 2 n tiles per warp, not 4
    if (bits == 8) {
      if (narrow) launch_kron<T, 8, 2, 2>(p, device, s);
      else launch_kron<T, 8, 2, 4>(p, device, s);
    } else {
      if (narrow) launch_kron<T, 4, 2, 2>(p, device, s);
      else launch_kron<T, 4, 2, 4>(p, device, s);
    }
  });
  check_launch("quantize_act_kron");
}

}  // namespace modaq
