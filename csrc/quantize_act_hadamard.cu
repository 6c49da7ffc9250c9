// quantize_act with the randomized Hadamard transform, K = m * p (p = 2^k >= 8): one pass reads
// X [M, K] (fp16 / bf16), writes int8 (or paired int4) + fp32 per-token scales.  Every core m
// up to 176 comes here; quantize_act_transform.cu's kernel keeps only p < 8, tokens over the
// shared-memory budget and inputs that are not 16-byte aligned.  Unsmoothed tokens with +-1
// signs take quantize_act_hadamard_mix.cu where it applies (ops.fast_activation.hadamard_kernel).
//
// Per token, X_r [m, p] -> ((X_r / smooth) * signs) S_p -> H_m^T (.) / sqrt(K), as modaq.ops.reference:
//   load   16-byte chunks (8 values) into registers; smoothing, signs and FWHT stages h = 1, 2, 4
//          in registers; fp32 into a shared buffer [rows][S] (S = p padded to S % 32 == 4).
//   FWHT   stages h >= 8 in shared memory: one pass over bits 3 .. log2 p when p <= 512 (each
//          thread holds up to 64 values of a row at stride 8; a warp covers 8 offsets x 4 rows
//          spaced two apart, so its reads hit 32 different banks), two passes (bits 3..7, then
//          8..) when p >= 1024, with 8 floats of padding after every 256 columns so both are
//          conflict free and every task's values sit at a constant stride.
//          Butterflies in the reference's order (increasing h; a + b, a - b): bit-identical fp32.
//   mix    m > 1: Y = H_m^T Z on the tensor cores, one warp per (token, 8-column strip) with all
//          row tiles in registers, then times 1 / sqrt(K).  H_m (+-1) is exact in one term; Z
//          is split for fp32 accuracy: m <= 64 into 2 tf32 terms (m16n8k8), larger cores into
//          3 bf16 terms (m16n8k16, fewer mmas where the mma count dominates).
//   absmax in registers where the final values are made (the last FWHT pass for m = 1, the mix
//          otherwise), one warp reduction and one shared atomic per task.
//   quant  per 8-value chunk: scale, clamp (clip < 1), round by the 1.5 * 2^23 magic add (the same fp32
//          operations as modaq.formats.quantize_act_sym), bytes packed with PRMT, 8-byte stores.
// CTAs are persistent: a CTA takes groups of G tokens (G * K ~ 4096 values) in turn and issues
// the global loads of its next group before transforming the current one, so every CTA keeps
// one group of loads in flight through the barriers between the phases.
//
// Measured on an H200 (int8 out, int_gemm_NVIDIA_H200_largeM.md), M = 1024 / 4096 / 16384, as a
// share of the copy kernel's 4.14 TB/s: K = 4096 (m = 1) 27 / 31 / 33%, 3584 (28 x 128) 15-17%,
// 14336 (28 x 512) 17-18%, 18944 (148 x 128) 10%, 1152 (36 x 32) 7-12%.  The kernels this one
// replaced (generic shared-memory FWHT passes, m <= 60 mixed with fp32 FMAs one token per CTA,
// larger cores on quantize_act_transform.cu's kernel) took 1.6x (4096), 1.1x (3584), 2.0x
// (14336) and 2.3x (18944) as long.  At M = 1 a token is one CTA: 14336 in 14 us, 18944 in 28 us
// (a few tokens of K >= 8192 take quantize_act_hadamard_small.cu's thread-block clusters instead).
// What limits it (ncu, first version, K = 3584 / 4096, M = 4096): instruction issue, not DRAM
// (7-16% busy): 52 (m = 1) and 99 (m = 28) instructions per value at 16 warps per SM (128
// registers: 2 CTAs), ~6.6 cycles between a warp's instructions, mostly fixed-latency
// dependencies and barriers between the phases.  Since then: the tf32 mix, the mix's k steps
// unrolled, the clamp dropped when clip = 1 (3584: 85 -> 67 us at M = 4096).  The tried
// alternative, 3 CTAs per SM at 80 registers, spilled and was no faster.  Reaching 70% needs
// ~25 instructions per value: fewer shared-memory round trips (FWHT stages across lanes done
// in the mix's tensor-core pass) and more groups in flight per SM.
#include "quantize_act_common.cuh"

#include <cmath>
#include <stdexcept>
#include <type_traits>

namespace modaq {

void quantize_act_hadamard_tc(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t signs,
                              std::uintptr_t left, std::uintptr_t q, std::uintptr_t scale, int64_t M,
                              int m, int p2, int bits, int dtype, int device, std::uintptr_t stream,
                              float clip_ratio);

namespace {

constexpr int kHT = 256;                  // threads per CTA
constexpr int kHWarps = kHT / 32;
constexpr int kGroupValues = 4096;        // G = max(1, kGroupValues / K) tokens per group
constexpr int kMaxG = kGroupValues / 16;  // p >= 16 when m = 1, m >= 2 otherwise: K >= 16
constexpr int kMaxChunks = 12 * kHT;      // 12 prefetched 16-byte chunks per thread at most
constexpr size_t kHBufBudget = 112 * 1024;
constexpr int kTf32MaxCore = 64;          // cores mixed with tf32 mmas (left_tf32), larger with bf16

struct HParams {
  const void* x;
  const float* smooth;  // [K] or null
  const float* signs;   // [K] or null
  const uint4* left;    // A fragments of H_m^T: mma.m16n8k16 bf16 (m > kTf32MaxCore)
  const uint4* left_tf32;  // mma.m16n8k8 tf32 (1 < m <= kTf32MaxCore)
  uint8_t* q;
  float* scale;
  int64_t M, groups;
  int m, p, log2p, K, S, G;
  int chunks;           // 16-byte chunks of a group: G * K / 8
  int rows;             // buffer rows: G * m, padded to a multiple of 8 for the one-pass FWHT
  int pad;              // p >= 1024: 8 floats of padding after every 256 columns (~0 mask), else 0
  float inv_chunks;     // 1 / (K / 8), for the token of a chunk
  float mix_scale;      // 1 / sqrt(K) (m > 1)
  float final_scale;    // 1 / sqrt(K) (m = 1)
  float clip;
};

__device__ __forceinline__ int phys_col(const HParams& p, int col) { return col + ((col >> 5) & p.pad & ~7); }

// token of chunk c (c < G * K / 8): a float estimate, corrected
__device__ __forceinline__ int token_of_chunk(const HParams& p, int c) {
  if (p.G == 1) return 0;
  const int c8 = p.K >> 3;
  int g = static_cast<int>(static_cast<float>(c) * p.inv_chunks);
  if (g * c8 > c) --g;
  if ((g + 1) * c8 <= c) ++g;
  return g;
}

// value k of token g in the buffer
__device__ __forceinline__ float* value_ptr(const HParams& p, float* buf, int g, int k) {
  return buf + (g * p.m + (k >> p.log2p)) * p.S + phys_col(p, k & (p.p - 1));
}

__device__ __forceinline__ float* chunk_ptr(const HParams& p, float* buf, int c, int& g) {
  g = token_of_chunk(p, c);
  return value_ptr(p, buf, g, (c - g * (p.K >> 3)) * 8);
}

// One shared atomic per set of lanes that hold the same token.
__device__ __forceinline__ void flush_absmax(unsigned* amax_bits, int tok, float mx, bool active) {
  const unsigned mask = __match_any_sync(0xffffffffu, active ? tok : -1);
  const unsigned top = __reduce_max_sync(mask, active ? __float_as_uint(mx) : 0u);
  if (active && (threadIdx.x & 31) == __ffs(mask) - 1) atomicMax(amax_bits + tok, top);
}

// ------------------------------------------------------------------------- load

template <int U>
__device__ __forceinline__ void load_group(const HParams& p, int64_t group, uint4 (&raw)[U]) {
  const int64_t tok0 = group * p.G;
  const int64_t left_tokens = p.M - tok0;
  const int valid = static_cast<int>((left_tokens < p.G ? left_tokens : p.G) * (p.K >> 3));
  const uint4* src = static_cast<const uint4*>(p.x) + tok0 * (p.K >> 3);
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int c = threadIdx.x + u * kHT;
    raw[u] = c < valid ? ld_stream(src + c) : make_uint4(0u, 0u, 0u, 0u);
  }
}

template <typename T, int U>
__device__ __forceinline__ void store_group(const HParams& p, const uint4 (&raw)[U], float* buf) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int c = threadIdx.x + u * kHT;
    if (c >= p.chunks) break;
    int g;
    float* dst = chunk_ptr(p, buf, c, g);
    const int k = (c - g * (p.K >> 3)) * 8;
    float f[8];
    hadamard_chunk8<T>(raw[u], p.smooth, p.signs, k, f);
    reinterpret_cast<float4*>(dst)[0] = make_float4(f[0], f[1], f[2], f[3]);
    reinterpret_cast<float4*>(dst)[1] = make_float4(f[4], f[5], f[6], f[7]);
  }
}

// ------------------------------------------------------------------------- FWHT

// FWHT stages lo .. lo + NB - 1 of every row: a task holds the 2^NB values whose column differs
// only in those bits.  ONE_PASS (lo = 3, p <= 512): the task's other bits are its row, rows
// visited 0, 2, 4, 6, 1, 3, 5, 7 within each 8 so that a warp's 4 rows are 2 * S apart (banks
// 8 apart).  FINAL: these are the token's final values: fold them into the token absmax.
template <int NB, bool ONE_PASS>
__device__ void fwht_stage_pass(const HParams& p, float* buf, int lo, bool final, unsigned* amax_bits) {
  constexpr int V = 1 << NB;
  const int rows = ONE_PASS ? p.rows : p.G * p.m;
  const int tasks = (rows << p.log2p) >> NB;
  for (int base = 0; base < tasks; base += kHT) {  // uniform trip count: warp collectives below
    const int task = base + threadIdx.x;
    const bool in = task < tasks;
    const int low = task & ((1 << lo) - 1);
    int high = task >> lo;
    if (ONE_PASS) high = (high & ~7) | ((high & 3) << 1) | ((high >> 2) & 1);
    const int e = low | (high << (lo + NB));
    const int row = e >> p.log2p;
    // lo = 3 (values in one 256-column block) or 8 (blocks j): the padding is a constant stride
    const int col = ONE_PASS ? (e & (p.p - 1)) : phys_col(p, e & (p.p - 1));
    float* r = buf + row * p.S;
    const int stride = ONE_PASS || lo == 3 ? 1 << lo : (1 << lo) + 8;
    float v[V];
    if (in) {
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = r[col + j * stride];
      fwht_registers<NB>(v);
#pragma unroll
      for (int j = 0; j < V; ++j) r[col + j * stride] = v[j];
    }
    if (final) {  // m = 1: row = token
      float mx = 0.f;
      if (in) {
#pragma unroll
        for (int j = 0; j < V; ++j) mx = max_abs_nan(mx, v[j]);
      }
      flush_absmax(amax_bits, row, mx, in && row < p.G);
    }
  }
}

template <bool ONE_PASS>
__device__ void fwht_dispatch(const HParams& p, float* buf, int lo, int nb, bool final, unsigned* amax_bits) {
  switch (nb) {
    case 1: fwht_stage_pass<1, ONE_PASS>(p, buf, lo, final, amax_bits); break;
    case 2: fwht_stage_pass<2, ONE_PASS>(p, buf, lo, final, amax_bits); break;
    case 3: fwht_stage_pass<3, ONE_PASS>(p, buf, lo, final, amax_bits); break;
    case 4: fwht_stage_pass<4, ONE_PASS>(p, buf, lo, final, amax_bits); break;
    case 5: fwht_stage_pass<5, ONE_PASS>(p, buf, lo, final, amax_bits); break;
    default: fwht_stage_pass<6, ONE_PASS>(p, buf, lo, final, amax_bits); break;
  }
}

__device__ void fwht_token_rows(const HParams& p, float* buf, unsigned* amax_bits) {
  const bool final = p.m == 1;
  if (p.log2p <= 9) {
    if (p.log2p > 3) fwht_dispatch<true>(p, buf, 3, p.log2p - 3, final, amax_bits);
  } else {
    fwht_stage_pass<5, false>(p, buf, 3, false, amax_bits);
    __syncthreads();
    fwht_dispatch<false>(p, buf, 8, p.log2p - 8, final, amax_bits);
  }
  __syncthreads();
}

// ------------------------------------------------------------------------- mix (m > 1)

// The mix's output strip: Y = acc * mix_scale into rows i < m of this lane's two columns zc,
// folded into the token's absmax (one warp reduction, one shared atomic).
template <int MT>
__device__ __forceinline__ void store_mix_strip(const HParams& p, float* zc, const float (&acc)[MT][4],
                                                unsigned* token_amax) {
  const int g = (threadIdx.x & 31) >> 2;
  float mx = 0.f;
#pragma unroll
  for (int rt = 0; rt < MT; ++rt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = rt * 16 + g + 8 * h;
      if (i >= p.m) continue;
      const float y0 = acc[rt][2 * h] * p.mix_scale, y1 = acc[rt][2 * h + 1] * p.mix_scale;
      *reinterpret_cast<float2*>(zc + i * p.S) = make_float2(y0, y1);
      mx = max_abs_nan(max_abs_nan(mx, y0), y1);
    }
  }
  const unsigned top = __reduce_max_sync(0xffffffffu, __float_as_uint(mx));
  if ((threadIdx.x & 31) == 0) atomicMax(token_amax, top);
}

// Y = H_m^T Z * mix_scale in place, one warp per (token, 8-column strip), MT >= ceil(m / 16).
template <int MT>
__device__ void mix_rows(const HParams& p, float* buf, unsigned* amax_bits) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2;
  const int mt = (p.m + 15) >> 4, strips = p.p >> 3, shift = p.log2p - 3;
  for (int unit = warp; unit < p.G * strips; unit += kHWarps) {
    const int tok = unit >> shift, ct = unit & (strips - 1);
    float* zt = buf + tok * p.m * p.S;
    const float* zn = zt + phys_col(p, ct * 8 + g);  // this lane's B column
    auto load = [&](int k) -> float { return k < p.m ? zn[k * p.S] : 0.f; };
    float acc[MT][4] = {};
    mix_strip_bf16<MT>(acc, p.left, mt, load);
    __syncwarp();  // every lane's reads of this strip precede the writes
    store_mix_strip<MT>(p, zt + phys_col(p, ct * 8 + 2 * (lane & 3)), acc, amax_bits + tok);
  }
}

// The same with tf32 mmas for small cores (MT <= 4 row tiles): Z splits into two tf32 terms,
// hi = Z with the 13 low bits cleared and lo = Z - hi (exact), 2 instructions per value against
// ~7 for three bf16 terms and their packing; the product error stays ~2^-22 of |Z|.  Twice the
// mma count of the bf16 path (k = 8 per mma), which small cores can afford.
template <int MT>
__device__ void mix_rows_tf32(const HParams& p, float* buf, unsigned* amax_bits) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int ks_n = (p.m + 7) >> 3, strips = p.p >> 3, shift = p.log2p - 3;
  for (int unit = warp; unit < p.G * strips; unit += kHWarps) {
    const int tok = unit >> shift, ct = unit & (strips - 1);
    float* zt = buf + tok * p.m * p.S;
    const float* zn = zt + phys_col(p, ct * 8 + g);
    float acc[MT][4] = {};
#pragma unroll
    for (int ks = 0; ks < 2 * MT; ++ks) {  // unrolled: every k step's loads issue at once
      if (ks >= ks_n) break;
      const int k0 = ks * 8 + c;
      const float z0 = k0 < p.m ? zn[k0 * p.S] : 0.f, z1 = k0 + 4 < p.m ? zn[(k0 + 4) * p.S] : 0.f;
      const uint32_t hi[2] = {__float_as_uint(z0) & ~0x1FFFu, __float_as_uint(z1) & ~0x1FFFu};
      const uint32_t lo[2] = {__float_as_uint(z0 - __uint_as_float(hi[0])),
                              __float_as_uint(z1 - __uint_as_float(hi[1]))};
#pragma unroll
      for (int rt = 0; rt < MT; ++rt) {
        if (rt * 16 < p.m) {
          const uint4 f = __ldg(p.left_tf32 + static_cast<size_t>(rt * ks_n + ks) * 32 + lane);
          const uint32_t a[4] = {f.x, f.y, f.z, f.w};
          mma_tf32_1688(acc[rt], a, hi);
          mma_tf32_1688(acc[rt], a, lo);
        }
      }
    }
    __syncwarp();  // every lane's reads of this strip precede the writes
    store_mix_strip<MT>(p, zt + phys_col(p, ct * 8 + 2 * (lane & 3)), acc, amax_bits + tok);
  }
}

// ------------------------------------------------------------------------- quantize

template <int BITS, bool FINAL>
__device__ void quantize_group(const HParams& p, float* buf, const unsigned* amax_bits, int64_t tok0) {
  constexpr int qmax = BITS == 8 ? 127 : 7;
  const int64_t left_tokens = p.M - tok0;
  const int gv = static_cast<int>(left_tokens < p.G ? left_tokens : p.G);
  if (threadIdx.x < gv) {
    const float amax = __uint_as_float(amax_bits[threadIdx.x]) * (FINAL ? p.final_scale : 1.f);
    p.scale[tok0 + threadIdx.x] = token_scale(clipped_range(amax, p.clip), amax != amax, qmax);
  }
  int cur = -1;
  float inv = 0.f;
  auto token_inv = [&](int g) {
    if (g != cur) {
      cur = g;
      const float amax = __uint_as_float(amax_bits[g]) * (FINAL ? p.final_scale : 1.f);
      inv = inv_scale(clipped_range(amax, p.clip), amax != amax, qmax);
    }
  };
  auto load8 = [&](const float* src, float (&f)[8]) {
    const float4 a = reinterpret_cast<const float4*>(src)[0], b = reinterpret_cast<const float4*>(src)[1];
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
    if (FINAL) {
#pragma unroll
      for (int j = 0; j < 8; ++j) f[j] *= p.final_scale;
    }
  };
  if (BITS == 8) {
    for (int c = threadIdx.x; c < p.chunks; c += kHT) {
      int g;
      const float* src = chunk_ptr(p, buf, c, g);
      if (g >= gv) break;  // tokens grow with c
      token_inv(g);
      uint2 out = make_uint2(0u, 0u);  // inv = 0: a zero, NaN or infinite token quantizes to 0
      if (inv > 0.f) {
        float f[8];
        load8(src, f);
        uint32_t r[8];
        if (p.clip < 1.f) {
#pragma unroll
          for (int j = 0; j < 8; ++j) r[j] = rounded_bits(f[j], inv, static_cast<float>(qmax));
        } else {  // |v| <= absmax: |v * inv| rounds to at most qmax, the clamp is a no-op
#pragma unroll
          for (int j = 0; j < 8; ++j) r[j] = rounded_bits(f[j], inv, static_cast<float>(qmax), false);
        }
        out.x = __byte_perm(__byte_perm(r[0], r[1], 0x0040), __byte_perm(r[2], r[3], 0x0040), 0x5410);
        out.y = __byte_perm(__byte_perm(r[4], r[5], 0x0040), __byte_perm(r[6], r[7], 0x0040), 0x5410);
      }
      *reinterpret_cast<uint2*>(p.q + (tok0 + g) * p.K + (c - g * (p.K >> 3)) * 8) = out;
    }
    return;
  }
  // int4, half-block pairs: byte j of a 128-block holds values j and j + 64 (paired_indices)
  const int full = p.K >> 7;
  for (int w = threadIdx.x; w < gv * full * 8; w += kHT) {
    const int blk = w >> 3, g = blk / full, b = blk - g * full;
    const int k = b * 128 + (w & 7) * 8;  // the low chunk; the high one is 64 values on
    const float* lo_src = value_ptr(p, buf, g, k);
    const float* hi_src = value_ptr(p, buf, g, k + 64);
    token_inv(g);
    uint2 out = make_uint2(0u, 0u);
    if (inv > 0.f) {
      float lo[8], hi[8];
      load8(lo_src, lo);
      load8(hi_src, hi);
      uint32_t word[2] = {0u, 0u};
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint32_t l = rounded_bits(lo[j], inv, static_cast<float>(qmax)) & 0xFu;
        const uint32_t h = rounded_bits(hi[j], inv, static_cast<float>(qmax)) & 0xFu;
        word[j >> 2] |= (l | (h << 4)) << (8 * (j & 3));
      }
      out = make_uint2(word[0], word[1]);
    }
    *reinterpret_cast<uint2*>(p.q + (tok0 + g) * (p.K / 2) + b * 64 + (w & 7) * 8) = out;
  }
  const int tail = p.K - full * 128;  // a last block of length < 128: scalar
  for (int w = threadIdx.x; w < gv * (tail / 2); w += kHT) {
    const int g = w / (tail / 2), j = full * 64 + (w - g * (tail / 2));
    int lo_k, hi_k;
    paired_indices(j, p.K, lo_k, hi_k);
    token_inv(g);
    auto value = [&](int k) { return *value_ptr(p, buf, g, k) * (FINAL ? p.final_scale : 1.f); };
    uint8_t b = 0;
    if (inv > 0.f)
      b = pack_nibbles(static_cast<int>(rounded_bits(value(lo_k), inv, qmax) & 0xFu),
                       static_cast<int>(rounded_bits(value(hi_k), inv, qmax) & 0xFu));
    p.q[(tok0 + g) * (p.K / 2) + j] = b;
  }
}

// ------------------------------------------------------------------------- kernel

template <typename T, int BITS, int MT, int U>
__global__ void __launch_bounds__(kHT, 2) hadamard_quantize_kernel(HParams p) {
  extern __shared__ float4 smem[];
  float* buf = reinterpret_cast<float*>(smem);
  __shared__ unsigned amax_bits[kMaxG];
  uint4 raw[U];
  int64_t group = blockIdx.x;
  if (group < p.groups) load_group<U>(p, group, raw);
  for (; group < p.groups; group += gridDim.x) {
    for (int t = threadIdx.x; t < p.G; t += kHT) amax_bits[t] = 0u;
    store_group<T, U>(p, raw, buf);
    if (group + gridDim.x < p.groups) load_group<U>(p, group + gridDim.x, raw);  // in flight meanwhile
    __syncthreads();
    fwht_token_rows(p, buf, amax_bits);
    if constexpr (MT > 4) {
      mix_rows<MT>(p, buf, amax_bits);
      __syncthreads();
    } else if constexpr (MT > 0) {
      mix_rows_tf32<MT>(p, buf, amax_bits);
      __syncthreads();
    }
    quantize_group<BITS, MT == 0>(p, buf, amax_bits, group * p.G);
    __syncthreads();  // the buffer and amax_bits are reused by the next group
  }
}

template <typename T, int BITS, int MT, int U>
void launch_hp(const HParams& p, size_t smem, int device, cudaStream_t s) {
  launch_persistent(hadamard_quantize_kernel<T, BITS, MT, U>, p.groups, kHT, smem, device, s, p,
                    "quantize_act_hadamard launch");
}

bool aligned16(std::uintptr_t ptr) { return (ptr & 15) == 0; }

// floats per buffer row: p (+ the padding of p >= 1024), rounded up to S % 32 == 4
size_t row_stride(int p2) {
  const int cols = p2 + (p2 >= 1024 ? p2 / 32 : 0);
  return static_cast<size_t>(cols + ((4 - cols) % 32 + 32) % 32);
}

}  // namespace

void quantize_act_hadamard(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t signs, std::uintptr_t left,
                           std::uintptr_t left_tf32, std::uintptr_t q, std::uintptr_t scale, int64_t M, int m,
                           int p2, int bits, int dtype, int device, std::uintptr_t stream, float clip_ratio) {
  if (bits != 4 && bits != 8) throw std::invalid_argument("modaq._C.quantize_act_hadamard: bits must be 4 or 8");
  if (m < 1 || p2 < 1 || (p2 & (p2 - 1)) != 0)
    throw std::invalid_argument("modaq._C.quantize_act_hadamard: m must be >= 1 and p a power of two");
  if (M < 0) throw std::invalid_argument("modaq._C.quantize_act_hadamard: M must be >= 0");
  const int64_t K = static_cast<int64_t>(m) * p2;
  const int G = K >= kGroupValues ? 1 : static_cast<int>(kGroupValues / K);
  const bool one_pass = p2 <= 512;
  const int rows = one_pass ? (G * m + 7) / 8 * 8 : G * m;
  const size_t smem = static_cast<size_t>(rows) * row_stride(p2) * sizeof(float);
  const bool fits = p2 >= 8 && (m > 1 || p2 >= 16) && m <= 176 &&
                    (m == 1 || (m <= kTf32MaxCore ? left_tf32 : left) != 0) &&
                    G * K / 8 <= kMaxChunks && smem <= kHBufBudget && aligned16(x) && aligned16(smooth) &&
                    aligned16(signs);
  if (!fits) {
    quantize_act_hadamard_tc(x, smooth, signs, left, q, scale, M, m, p2, bits, dtype, device, stream, clip_ratio);
    return;
  }
  if (M == 0) return;
  HParams p{};
  p.x = reinterpret_cast<const void*>(x);
  p.smooth = reinterpret_cast<const float*>(smooth);
  p.signs = reinterpret_cast<const float*>(signs);
  p.left = reinterpret_cast<const uint4*>(left);
  p.left_tf32 = reinterpret_cast<const uint4*>(left_tf32);
  p.q = reinterpret_cast<uint8_t*>(q);
  p.scale = reinterpret_cast<float*>(scale);
  p.M = M;
  p.G = G;
  p.groups = (M + G - 1) / G;
  p.m = m;
  p.p = p2;
  p.log2p = __builtin_ctz(static_cast<unsigned>(p2));
  p.K = static_cast<int>(K);
  p.S = static_cast<int>(row_stride(p2));
  p.chunks = static_cast<int>(G * K / 8);
  p.rows = rows;
  p.pad = one_pass ? 0 : ~0;
  p.inv_chunks = 1.f / static_cast<float>(K / 8);
  const float inv_sqrt = static_cast<float>(1.0 / std::sqrt(static_cast<double>(K)));
  p.mix_scale = m > 1 ? inv_sqrt : 1.f;
  p.final_scale = m > 1 ? 1.f : inv_sqrt;
  p.clip = clip_ratio;
  cudaStream_t s = enter(device, stream);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto go = [&](auto bits_tag) {
      constexpr int B = decltype(bits_tag)::value;
      auto by_u = [&](auto mt_tag) {
        constexpr int MT = decltype(mt_tag)::value;
        if (p.chunks > 8 * kHT) launch_hp<T, B, MT, 12>(p, smem, device, s);
        else if (p.chunks > 4 * kHT) launch_hp<T, B, MT, 8>(p, smem, device, s);
        else launch_hp<T, B, MT, 4>(p, smem, device, s);
      };
      // row tiles of the mix: exact for 28 (3584, 14336) and 148 (18944); the rest predicated
      if (m == 1) by_u(std::integral_constant<int, 0>{});
      else if (m <= 32) by_u(std::integral_constant<int, 2>{});
      else if (m <= 64) by_u(std::integral_constant<int, 4>{});
      else if (m <= 160) by_u(std::integral_constant<int, 10>{});
      else by_u(std::integral_constant<int, 11>{});
    };
    if (bits == 8) go(std::integral_constant<int, 8>{});
    else go(std::integral_constant<int, 4>{});
  });
  check_launch("quantize_act_hadamard");
}

}  // namespace modaq
