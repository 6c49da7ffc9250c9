// quantize_act with the randomized Hadamard transform, "mix first": for K = m' * p' with
// p' = min(p, 128) in {32, 64, 128} (K = m * p as in quantize_act_hadamard.cu) the transform is
//
//   Y = H_m'^T (D x)_r S_p' / sqrt(K),   (D x)_r = (x * signs) viewed [m', p'],
//
// with H_m' = kron(H_m, S_(p / p')) = modaq.hadamard.hadamard_matrix(m') (+-1) and S_p' the
// Sylvester matrix (FWHT over the row's p' columns).  The reference applies S_p first and H_m
// second; the two factors act on different indices, so the order is free, and mixing first
// multiplies the *input* values, which are exact in fp16 / bf16 (signs +-1 only flip sign bits):
// the m'-row mix is one tensor-core term (mma.m16n8k16, fp32 accumulation), not the three bf16
// terms a fp32 operand needs (quantize_act_hadamard.cu).  The FWHT then runs on the fp32 mix
// output in registers.  Smoothing (x / smooth is not exact in 16 bits) stays on the other kernels.
//
// Per group of G tokens (G * ceil(m' / 16) row tiles = the CTA's warps), persistent CTAs:
//   load   cp.async of the next group into the other half of a double buffer [G * m'][p' + 8]
//          (16 bytes of row padding: conflict-free ldmatrix); then each thread flips the sign
//          bits of the chunks it copied (signs as fp32 +-1, their sign bits XORed in).
//   mix    one warp per (token, 16-row tile): A = H_m'^T fragments (__ldg, one 16-byte load per
//          k step), B = the token's rows via ldmatrix.x4.trans (rows past m' read a zero row),
//          acc[p' / 8 strips][4] fp32: the warp's 16 rows x p' columns.
//   FWHT   on acc: column bit 0 within a register pair, bits 1-2 across the 4 lanes of a row
//          (shfl_xor, one FMA each), bits 3.. across the strips; times 1 / sqrt(K); absmax.
//   quant  per-token absmax (warp reduction + shared atomic), then int8 bytes into a staging
//          buffer, written out as 16-byte rows (int8) or paired into int4 bytes (the
//          half-block-paired layout: byte j of a 128-block = values j and j + 64).
//
// Measured on an H200 (int_gemm_NVIDIA_H200_mix.md, int8 out, share of the 4.2 TB/s copy;
// the persistent kernel of quantize_act_hadamard.cu in the same run): K = 18944 M = 4096 211 us
// (26%) vs 563; 3584 M = 16384 108 us (39%) vs 249; 14336 M = 4096 153 vs 237; 1152 M = 16384
// 48 vs 118; 4096 (m = 1) 125 vs 149; M = 1: 18944 8.9 us (cluster kernel 12.3, persistent 29.5).
// What limits it (ncu, K = 3584 / 18944, M = 16384): instruction issue again, ~1.1 warp
// instructions per value (35 per thread-value; the FWHT's 9 are the largest known share),
// 0.5-0.6 issued per scheduler and cycle at 16-20 resident warps per SM (96 registers, 77 / 102 KB
// of shared memory per CTA), DRAM 19-21% busy.
#include "quantize_act_common.cuh"

#include <cmath>
#include <stdexcept>

namespace modaq {

namespace {

constexpr int kMaxG = 4;
constexpr int kInPad = 8;     // elements of padding per staged input row
constexpr int kOutPad = 16;   // bytes of padding per staged output row (conflict-free u16 stores)
constexpr int kMaxRows = 176; // m' <= 176: 11 row tiles

struct MixParams {
  const void* x;
  const float* signs;  // [K] +-1 or null
  const uint4* left;   // A fragments of H_m'^T [mt][ks][32 lanes] (fp16 or bf16 as x)
  uint8_t* q;
  float* scale;
  int64_t M, groups;
  int m, log2p, K, G, mt, ks;
  int in_stride;   // elements per staged input row
  int out_stride;  // bytes per staged output row
  int buf_elems;   // elements of one input buffer: G * m * in_stride
  float inv_sqrt_k, clip;
};

// f(t, c, row_offset) for each 16-byte chunk c (values 8c .. 8c + 7) of the group's tokens t
// (those before M) that this thread handles; row_offset: the chunk's element offset in the
// token's staged rows [m'][in_stride].  load_group and flip_signs walk the same chunks, so each
// thread flips the signs of exactly the chunks it copied (no barrier between them).
template <typename F>
__device__ __forceinline__ void for_each_chunk(const MixParams& p, int64_t group, F&& f) {
  const int64_t tok0 = group * p.G;
  const int chunks = p.K >> 3, row_chunks_log2 = p.log2p - 3;
  for (int t = 0; t < p.G && tok0 + t < p.M; ++t) {
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
      const int row = c >> row_chunks_log2, col = (c & ((1 << row_chunks_log2) - 1)) << 3;
      f(t, c, row * p.in_stride + col);
    }
  }
}

// cp.async the group's tokens into buf (rows of p' values at in_stride); tokens past M are skipped.
template <typename T>
__device__ __forceinline__ void load_group(const MixParams& p, int64_t group, T* buf) {
  for_each_chunk(p, group, [&](int t, int c, int at) {
    const T* src = static_cast<const T*>(p.x) + (group * p.G + t) * p.K;
    cp_async16(smem_addr(buf + t * p.m * p.in_stride + at), src + c * 8);
  });
}

// x * signs for the chunks this thread copied: sign bits XORed.
template <typename T>
__device__ __forceinline__ void flip_signs(const MixParams& p, int64_t group, T* buf) {
  for_each_chunk(p, group, [&](int t, int c, int at) {
    uint4* v = reinterpret_cast<uint4*>(buf + t * p.m * p.in_stride + at);
    const uint4 s0 = __ldg(reinterpret_cast<const uint4*>(p.signs + c * 8));
    const uint4 s1 = __ldg(reinterpret_cast<const uint4*>(p.signs + c * 8) + 1);
    uint4 w = *v;  // the 16-bit sign bits of two fp32 signs per word: bytes 2-3 of each
    w.x ^= __byte_perm(s0.x, s0.y, 0x7632) & 0x80008000u;
    w.y ^= __byte_perm(s0.z, s0.w, 0x7632) & 0x80008000u;
    w.z ^= __byte_perm(s1.x, s1.y, 0x7632) & 0x80008000u;
    w.w ^= __byte_perm(s1.z, s1.w, 0x7632) & 0x80008000u;
    *v = w;
  });
}

// acc[s] = rows rt*16.. of H_m'^T X_r, strip s (columns 8s .. 8s + 7).
template <typename T, int NS>
__device__ __forceinline__ void mix_tile(const MixParams& p, const T* tok_buf, const T* zero_row, int rt,
                                         float (&acc)[NS][4]) {
  const int lane = threadIdx.x & 31;
  const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8, lcol = (lane >> 4) * 8;
#pragma unroll
  for (int s = 0; s < NS; ++s) acc[s][0] = acc[s][1] = acc[s][2] = acc[s][3] = 0.f;
  for (int ks = 0; ks < p.ks; ++ks) {
    const uint4 f = __ldg(p.left + static_cast<size_t>(rt * p.ks + ks) * 32 + lane);
    const uint32_t a[4] = {f.x, f.y, f.z, f.w};
    const int row = ks * 16 + lrow;
    const T* src = row < p.m ? tok_buf + row * p.in_stride : zero_row;
#pragma unroll
    for (int j = 0; j < NS / 2; ++j) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, src + lcol + j * 16);
      mma_m16n8k16<T>(acc[2 * j], a, b);
      mma_m16n8k16<T>(acc[2 * j + 1], a, b + 2);
    }
  }
}

// FWHT over the p' = 8 NS columns of the warp's rows: acc[s][2h + e] is column 8s + 2c + e of
// row g + 8h (c = lane % 4).
template <int NS>
__device__ __forceinline__ void fwht_tile(float (&acc)[NS][4]) {
#pragma unroll
  for (int s = 0; s < NS; ++s) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float a = acc[s][2 * h], b = acc[s][2 * h + 1];
      acc[s][2 * h] = a + b;
      acc[s][2 * h + 1] = a - b;
    }
  }
  const int c = threadIdx.x & 3;
#pragma unroll
  for (int bit = 1; bit <= 2; bit <<= 1) {
    const float sgn = (c & bit) ? -1.f : 1.f;  // upper partner: other - own; lower: own + other
#pragma unroll
    for (int s = 0; s < NS; ++s) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[s][i] = fmaf(acc[s][i], sgn, __shfl_xor_sync(0xffffffffu, acc[s][i], bit));
    }
  }
#pragma unroll
  for (int h = 1; h < NS; h <<= 1) {
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      if (!(s & h)) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float a = acc[s][i], b = acc[s + h][i];
          acc[s][i] = a + b;
          acc[s + h][i] = a - b;
        }
      }
    }
  }
}

// The staged bytes of the group's tokens to q: 16-byte rows (int8) or paired nibbles (int4).
template <int BITS>
__device__ __forceinline__ void write_group(const MixParams& p, int64_t tok0, const uint8_t* out) {
  const int pmask = (1 << p.log2p) - 1;
  for (int t = 0; t < p.G && tok0 + t < p.M; ++t) {
    const uint8_t* o = out + t * p.m * p.out_stride;
    if (BITS == 8) {
      uint8_t* dst = p.q + (tok0 + t) * p.K;
      for (int c = threadIdx.x; c < (p.K >> 4); c += blockDim.x) {
        const int k = c << 4;
        *reinterpret_cast<uint4*>(dst + k) =
            *reinterpret_cast<const uint4*>(o + (k >> p.log2p) * p.out_stride + (k & pmask));
      }
    } else {
      uint8_t* dst = p.q + (tok0 + t) * (p.K >> 1);
      for (int w = threadIdx.x; w < (p.K >> 4); w += blockDim.x) {
        const int lo_k = ((w >> 3) << 7) + ((w & 7) << 3), hi_k = lo_k + 64;
        const uint2 lo = *reinterpret_cast<const uint2*>(o + (lo_k >> p.log2p) * p.out_stride + (lo_k & pmask));
        const uint2 hi = *reinterpret_cast<const uint2*>(o + (hi_k >> p.log2p) * p.out_stride + (hi_k & pmask));
        *reinterpret_cast<uint2*>(dst + (w << 3)) =
            make_uint2((lo.x & 0x0F0F0F0Fu) | ((hi.x & 0x0F0F0F0Fu) << 4),
                       (lo.y & 0x0F0F0F0Fu) | ((hi.y & 0x0F0F0F0Fu) << 4));
      }
    }
  }
}

template <typename T, int BITS, int NS>
__global__ void __maxnreg__(96) hadamard_mix_kernel(MixParams p) {
  extern __shared__ uint4 smem[];
  T* in_buf = reinterpret_cast<T*>(smem);                 // [2][G * m][in_stride]
  T* zero_row = in_buf + 2 * p.buf_elems;                 // [in_stride]
  uint8_t* out = reinterpret_cast<uint8_t*>(zero_row + p.in_stride);  // [G * m][out_stride]
  __shared__ unsigned amax_bits[kMaxG];
  constexpr float qmax = BITS == 8 ? 127.f : 7.f;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  for (int i = threadIdx.x; i < p.in_stride / 8; i += blockDim.x) reinterpret_cast<uint4*>(zero_row)[i] = uint4{};

  int64_t group = blockIdx.x;
  if (group < p.groups) load_group<T>(p, group, in_buf);
  cp_async_commit();
  for (int it = 0; group < p.groups; group += gridDim.x, ++it) {
    T* buf = in_buf + (it & 1) * p.buf_elems;
    if (group + gridDim.x < p.groups) load_group<T>(p, group + gridDim.x, in_buf + ((it + 1) & 1) * p.buf_elems);
    cp_async_commit();
    cp_async_wait<1>();  // this thread's copies of the current group have landed
    if (p.signs) flip_signs<T>(p, group, buf);
    if (threadIdx.x < p.G) amax_bits[threadIdx.x] = 0u;
    __syncthreads();

    const int tok = warp / p.mt, rt = warp - tok * p.mt;
    float acc[NS][4];
    mix_tile<T, NS>(p, buf + tok * p.m * p.in_stride, zero_row, rt, acc);
    fwht_tile<NS>(acc);
    float mx = 0.f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const bool valid = rt * 16 + g + 8 * h < p.m;  // rows past m' are padding
#pragma unroll
      for (int s = 0; s < NS; ++s) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          acc[s][2 * h + e] *= p.inv_sqrt_k;
          if (valid) mx = max_abs_nan(mx, acc[s][2 * h + e]);
        }
      }
    }
    const unsigned top = __reduce_max_sync(0xffffffffu, __float_as_uint(mx));
    if (lane == 0) atomicMax(amax_bits + tok, top);
    __syncthreads();

    const int64_t tok0 = group * p.G;
    const float amax = __uint_as_float(amax_bits[tok]);
    const bool nan = amax != amax;
    const float range = clipped_range(amax, p.clip);
    const float inv = inv_scale(range, nan, static_cast<int>(qmax));
    if (threadIdx.x < p.G && tok0 + threadIdx.x < p.M) {
      const float a = __uint_as_float(amax_bits[threadIdx.x]);
      p.scale[tok0 + threadIdx.x] = token_scale(clipped_range(a, p.clip), a != a, static_cast<int>(qmax));
    }
    const bool clamp = p.clip < 1.f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = rt * 16 + g + 8 * h;
      if (row >= p.m) continue;
      uint8_t* o = out + (tok * p.m + row) * p.out_stride + 2 * c;
#pragma unroll
      for (int s = 0; s < NS; ++s) {
        uint32_t pair = 0u;  // inv = 0: a zero, NaN or infinite token quantizes to 0
        if (inv > 0.f)
          pair = __byte_perm(rounded_bits(acc[s][2 * h], inv, qmax, clamp),
                             rounded_bits(acc[s][2 * h + 1], inv, qmax, clamp), 0x0040);
        *reinterpret_cast<uint16_t*>(o + 8 * s) = static_cast<uint16_t>(pair);
      }
    }
    __syncthreads();
    write_group<BITS>(p, tok0, out);
    // the next iteration's barrier orders these reads of `out` before its writes
  }
  cp_async_wait<0>();
}

struct MixPlan {
  int p2 = 0, m = 0, G = 0, mt = 0, warps = 0;
  size_t smem = 0;
};

// G tokens per group: a group is G * mt warps (one per row tile), G <= 4 / mt (H200,
// int_gemm_NVIDIA_H200_mix.md: K = 3584, M = 16384: G = 2 110 us, 4 124 us, 8 143 us; K = 18944:
// G = 1 215 us, 2 236 us), and fewer when the groups would not cover the SMs (small M).
MixPlan plan_mix(int m, int p2, int64_t M, int sms) {
  MixPlan plan;
  const int64_t K = static_cast<int64_t>(m) * p2;
  plan.p2 = p2 < 128 ? p2 : 128;
  if (plan.p2 < 32 || K % 128 != 0 || K / plan.p2 > kMaxRows) return plan;
  plan.m = static_cast<int>(K / plan.p2);
  plan.mt = (plan.m + 15) / 16;
  const int64_t per_sm = (M + sms - 1) / sms;
  plan.G = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(4 / plan.mt, per_sm)));
  plan.warps = plan.G * plan.mt;
  const size_t in_row = (plan.p2 + kInPad) * 2;
  plan.smem = 2 * plan.G * plan.m * in_row + in_row + static_cast<size_t>(plan.G) * plan.m * (plan.p2 + kOutPad);
  return plan;
}

template <typename T, int BITS, int NS>
void launch_mix(const MixParams& p, const MixPlan& plan, int device, cudaStream_t s) {
  launch_persistent(hadamard_mix_kernel<T, BITS, NS>, p.groups, plan.warps * 32, plan.smem, device, s, p,
                    "quantize_act_hadamard_mix launch");
}

}  // namespace

bool hadamard_mix_fits(int m, int p2, int device) {
  if (m < 1 || p2 < 1 || (p2 & (p2 - 1)) != 0) return false;
  const MixPlan plan = plan_mix(m, p2, int64_t{1} << 40, 1);  // the largest group
  return plan.m > 0 && plan.smem <= static_cast<size_t>(device_info(device).smem_optin);
}

int hadamard_mix_rows(int m, int p2) { return plan_mix(m, p2, 1, 1).m; }

void quantize_act_hadamard_mix(std::uintptr_t x, std::uintptr_t signs, std::uintptr_t left, std::uintptr_t q,
                               std::uintptr_t scale, int64_t M, int m, int p2, int bits, int dtype, int device,
                               std::uintptr_t stream, float clip_ratio) {
  if (bits != 4 && bits != 8) throw std::invalid_argument("modaq._C.quantize_act_hadamard_mix: bits must be 4 or 8");
  if (!hadamard_mix_fits(m, p2, device))
    throw std::invalid_argument("modaq._C.quantize_act_hadamard_mix: needs K = m * p with p >= 32 a power of two, "
                                "K % 128 == 0, K / min(p, 128) <= 176 and the shared memory for it");
  if (M < 0) throw std::invalid_argument("modaq._C.quantize_act_hadamard_mix: M must be >= 0");
  if (M == 0) return;
  const MixPlan plan = plan_mix(m, p2, M, device_info(device).sms);
  MixParams p{};
  p.x = reinterpret_cast<const void*>(x);
  p.signs = reinterpret_cast<const float*>(signs);
  p.left = reinterpret_cast<const uint4*>(left);
  p.q = reinterpret_cast<uint8_t*>(q);
  p.scale = reinterpret_cast<float*>(scale);
  p.M = M;
  p.G = plan.G;
  p.groups = (M + plan.G - 1) / plan.G;
  p.m = plan.m;
  p.log2p = __builtin_ctz(static_cast<unsigned>(plan.p2));
  p.K = m * p2;
  p.mt = plan.mt;
  p.ks = plan.mt;
  p.in_stride = plan.p2 + kInPad;
  p.out_stride = plan.p2 + kOutPad;
  p.buf_elems = plan.G * plan.m * p.in_stride;
  p.inv_sqrt_k = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.K)));
  p.clip = clip_ratio;
  cudaStream_t s = enter(device, stream);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto by_bits = [&](auto ns_tag) {
      constexpr int NS = decltype(ns_tag)::value;
      if (bits == 8) launch_mix<T, 8, NS>(p, plan, device, s);
      else launch_mix<T, 4, NS>(p, plan, device, s);
    };
    if (plan.p2 == 128) by_bits(std::integral_constant<int, 16>{});
    else if (plan.p2 == 64) by_bits(std::integral_constant<int, 8>{});
    else by_bits(std::integral_constant<int, 4>{});
  });
  check_launch("quantize_act_hadamard_mix");
}

}  // namespace modaq
