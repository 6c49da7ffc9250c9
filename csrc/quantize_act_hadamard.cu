// quantize_act with the randomized Hadamard transform for K = m * p, core m <= 60 and p >= 8
// (every 7B / SigLIP size but 18944 = 148 * 128, which quantize_act_transform.cu's tensor-core
// kernel keeps): one pass reads X [M, K], writes int8 (or paired int4) + fp32 per-token scales.
//
// Per token, X_r [m, p] -> (X_r * signs) S_p -> H_m^T (.) / sqrt(K), as modaq.ops.reference:
//   1. 16-byte loads of 8 values (kIlp chunks in flight per thread), smoothing and signs, FWHT
//      stages h = 1, 2, 4 in registers, stages h = 8 .. 128 by warp shuffles: chunk c is held by
//      lane c % 32 and rows are p / 8 chunks (a power of two), so lane ^ 2^b holds the values
//      8 * 2^b further along the same row.  Butterflies in the reference's order (increasing h;
//      lower index a, upper b -> a + b, a - b), so the FWHT is bit-identical fp32.
//   2. stages h >= 256 (p > 256) in shared memory (fwht_rows);
//   3. m > 1: each thread owns columns j of a token and holds Z[:, j] in registers; the m
//      outputs sum_r H_m[r, i] Z[r, j] are fp32 FMAs with +-1 (each exact up to one rounding,
//      like the reference's fp32 matmul up to summation order), times 1 / sqrt(K);
//   4. per-token absmax over all threads, then the shared quantization of the buffer.
// Why not the tensor-core kernel for these sizes: it splits Z into 3 bf16 terms and was ~10% of
// copy bandwidth (H100 / H200, benchmarks/results/int_gemm_*.md): 1 CTA per SM from its
// registers, generic predicated FWHT passes, and one warp per row for the absmax.
// Measured on an H200 (hadamard_tokens_nvidia_h200.md, int_gemm_NVIDIA_H200.md): 5-21% of the
// copy kernel's bandwidth (4.13 TB/s) at M >= 1024 (K = 4096, M = 4096: 62.9 us, 176 us before).  What limits it (ncu):
// the phases run one after another behind barriers with 16-24 warps per SM (issue rate ~0.6 per
// scheduler), at ~90 instructions per value (index math, the shared-memory FWHT pass, the
// quantizer); one token is one CTA, so at M = 1 a 14336-wide token takes 27 us on one SM.
#include "quantize_act_transform.cuh"

#include <cmath>
#include <stdexcept>
#include <type_traits>

namespace modaq {

void quantize_act_hadamard_tc(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t signs,
                              std::uintptr_t left, std::uintptr_t q, std::uintptr_t scale, int64_t M,
                              int m, int p2, int bits, int dtype, int device, std::uintptr_t stream,
                              float clip_ratio);

namespace {

constexpr int kIlp = 4;                   // 16-byte chunks loaded per thread before their use
constexpr int kMaxCore = 60;
constexpr size_t kBufBudget = 64 * 1024;  // fp32 token buffer per CTA: three CTAs per SM (cores <= 28)

// Stage 1; returns the FWHT stages done (3 in registers + the lane stages).
template <typename T>
__device__ int load_fwht(const Params& p, float* buf) {
  const int K = p.n1 * p.n2, cpt = K >> 3, total = p.tokens * cpt;
  const int lane = threadIdx.x & 31, row_chunks = p.n2 >> 3, row_shift = __ffs(p.n2) - 1;  // n2 = 2^k
  int lane_bits = 0;
  while (lane_bits < 5 && (2 << lane_bits) <= row_chunks) ++lane_bits;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * p.tokens;
  const T* x = static_cast<const T*>(p.x);
  for (int base = 0; base < total; base += kThreads * kIlp) {  // uniform trip count: shuffles below
    uint4 raw[kIlp];
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int c = base + u * kThreads + threadIdx.x, tok = c / cpt;
      raw[u] = make_uint4(0u, 0u, 0u, 0u);
      if (c < total && row0 + tok < p.M)
        raw[u] = __ldg(reinterpret_cast<const uint4*>(x + (row0 + tok) * K) + (c - tok * cpt));
    }
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int c = base + u * kThreads + threadIdx.x, tok = c / cpt;
      const bool in = c < total;
      const int k = (c - tok * cpt) * 8;
      float f[8];
      smoothed8<T>(raw[u], in ? p.smooth : nullptr, k, f);
      if (in && p.signs) {
        const float4 s0 = __ldg(reinterpret_cast<const float4*>(p.signs + k));
        const float4 s1 = __ldg(reinterpret_cast<const float4*>(p.signs + k) + 1);
        f[0] *= s0.x; f[1] *= s0.y; f[2] *= s0.z; f[3] *= s0.w;
        f[4] *= s1.x; f[5] *= s1.y; f[6] *= s1.z; f[7] *= s1.w;
      }
      fwht8(f);
      for (int b = 0; b < lane_bits; ++b) {
        // lower lane: a + b = o + f; upper lane: a - b = o - f; fma(+-1, f, o) rounds once: the same
        const float sign = (lane >> b) & 1 ? -1.f : 1.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) f[j] = fmaf(sign, f[j], __shfl_xor_sync(0xffffffffu, f[j], 1 << b));
      }
      if (in) {
        const int r = k >> row_shift, i = k & (p.n2 - 1);
        float4* dst = reinterpret_cast<float4*>(buf + (tok * p.n1 + r) * p.s + i);
        dst[0] = make_float4(f[0], f[1], f[2], f[3]);
        dst[1] = make_float4(f[4], f[5], f[6], f[7]);
      }
    }
  }
  return 3 + lane_bits;
}

// Stage 3: Y[:, j] = H_m^T Z[:, j] * stage2_scale in place, one column per thread at a time.
// core_s: H_m^T rows padded to MAXM (a multiple of 4, like every supported m).
template <int MAXM>
__device__ void mix_columns(const Params& p, float* buf, const float* core_s) {
  const int m = p.n1;
  for (int u = threadIdx.x; u < p.tokens * p.n2; u += kThreads) {
    const int tok = u / p.n2, j = u - tok * p.n2;
    float* col = buf + tok * m * p.s + j;
    float z[MAXM];
#pragma unroll
    for (int r = 0; r < MAXM; ++r) z[r] = r < m ? col[r * p.s] : 0.f;
    for (int i = 0; i < m; ++i) {
      const float* h = core_s + i * MAXM;
      float y = 0.f;
#pragma unroll
      for (int r = 0; r < MAXM; r += 4) {
        if (r < m) {
          const float4 hv = *reinterpret_cast<const float4*>(h + r);
          y = fmaf(hv.x, z[r], y);
          y = fmaf(hv.y, z[r + 1], y);
          y = fmaf(hv.z, z[r + 2], y);
          y = fmaf(hv.w, z[r + 3], y);
        }
      }
      col[i * p.s] = y * p.stage2_scale;
    }
  }
}

// Stage 4: absmax (of value * final_scale) and NaN flag per token, every thread on 8-value chunks.
__device__ void absmax_tokens(const Params& p, const float* buf, unsigned* amax_bits, int* nan_flag) {
  const int cpt = (p.n1 * p.n2) >> 3, row_shift = __ffs(p.n2) - 1;  // n2 = 2^k
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * p.tokens;
  int cur = -1, nan = 0;
  float mx = 0.f;
  auto flush = [&]() {
    if (cur < 0) return;
    atomicMax(amax_bits + cur, __float_as_uint(mx));  // non-negative floats order as uints
    if (nan) atomicOr(nan_flag + cur, 1);
  };
  for (int c = threadIdx.x; c < p.tokens * cpt; c += kThreads) {
    const int tok = c / cpt;
    if (row0 + tok >= p.M) break;  // tokens grow with c
    if (tok != cur) {
      flush();
      cur = tok;
      mx = 0.f;
      nan = 0;
    }
    const int k = (c - tok * cpt) * 8, r = k >> row_shift, i = k & (p.n2 - 1);
    const float4* src = reinterpret_cast<const float4*>(buf + (tok * p.n1 + r) * p.s + i);
    const float4 a = src[0], b = src[1];
    const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float w = v[e] * p.final_scale;
      nan |= w != w;
      mx = fmaxf(mx, fabsf(w));
    }
  }
  flush();
}

template <typename T, int BITS, int MAXM>
__global__ void __launch_bounds__(kThreads, MAXM > 28 ? 2 : 3) hadamard_quantize_kernel(Params p) {
  extern __shared__ float4 smem[];
  float* buf = reinterpret_cast<float*>(smem);
  __shared__ __align__(16) float core_s[MAXM > 1 ? MAXM * MAXM : 4];
  __shared__ unsigned amax_bits[kMaxTokens];
  __shared__ int nan_flag[kMaxTokens];
  if (threadIdx.x < kMaxTokens) {
    amax_bits[threadIdx.x] = 0u;
    nan_flag[threadIdx.x] = 0;
  }
  if constexpr (MAXM > 1) {
    for (int e = threadIdx.x; e < p.n1 * MAXM; e += kThreads) {
      const int i = e / MAXM, r = e - i * MAXM;
      core_s[e] = r < p.n1 ? __ldg(p.core + i * p.n1 + r) : 0.f;
    }
  }
  const int done = load_fwht<T>(p, buf);
  __syncthreads();
  fwht_rows(p, buf, done);  // synchronizes after each pass
  if constexpr (MAXM > 1) {
    mix_columns<MAXM>(p, buf, core_s);
    __syncthreads();
  }
  absmax_tokens(p, buf, amax_bits, nan_flag);
  __syncthreads();
  quantize_tokens<BITS>(p, buf, amax_bits, nan_flag);
}

template <typename T, int BITS, int MAXM>
void launch(const Params& p, cudaStream_t s) {
  auto kernel = hadamard_quantize_kernel<T, BITS, MAXM>;
  const size_t smem = token_bytes(p.n1, p.n2) * p.tokens;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
             "cudaFuncSetAttribute(quantize_act_hadamard)");
  const int64_t blocks = (p.M + p.tokens - 1) / p.tokens;
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, s>>>(p);
}

bool aligned16(std::uintptr_t ptr) { return (ptr & 15) == 0; }

}  // namespace

void quantize_act_hadamard(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t signs,
                           std::uintptr_t left, std::uintptr_t core, std::uintptr_t q, std::uintptr_t scale,
                           int64_t M, int m, int p2, int bits, int dtype, int device, std::uintptr_t stream,
                           float clip_ratio, int tokens) {
  const bool fits = m <= kMaxCore && (m == 1 || m % 4 == 0) && p2 >= 8 && p2 % 8 == 0 &&
                    token_bytes(m, p2) <= kBufBudget && (m == 1 || core != 0) && aligned16(x) &&
                    aligned16(smooth) && aligned16(signs);
  if (!fits) {
    quantize_act_hadamard_tc(x, smooth, signs, left, q, scale, M, m, p2, bits, dtype, device, stream, clip_ratio);
    return;
  }
  if (M == 0) return;
  Params p{};
  p.x = reinterpret_cast<const void*>(x);
  p.smooth = reinterpret_cast<const float*>(smooth);
  p.signs = reinterpret_cast<const float*>(signs);
  p.core = reinterpret_cast<const float*>(core);
  p.q = reinterpret_cast<uint8_t*>(q);
  p.scale = reinterpret_cast<float*>(scale);
  p.M = M;
  p.n1 = m;
  p.n2 = p2;
  p.s = padded_stride(p2);
  const float inv_sqrt = static_cast<float>(1.0 / std::sqrt(static_cast<double>(m) * p2));
  p.stage2_scale = m > 1 ? inv_sqrt : 1.f;
  p.final_scale = m > 1 ? 1.f : inv_sqrt;
  p.clip = clip_ratio;
  p.vec = true;
  if (tokens < 0 || tokens > kMaxTokens || token_bytes(m, p2) * tokens > kBufBudget)
    throw std::invalid_argument("modaq._C.quantize_act_hadamard: tokens per CTA out of range");
  if (tokens == 0) {
    // about 8192 values per CTA (power of two tokens): measured best or within 2% on an H200
    // (benchmarks/results/hadamard_tokens_nvidia_h200.json; e.g. K = 4096: 2 tokens 63 us,
    // 3 tokens 69 us at M = 4096)
    tokens = 1;
    while (tokens * m * p2 < 8192 && tokens * 2 <= kMaxTokens && token_bytes(m, p2) * tokens * 2 <= kBufBudget)
      tokens *= 2;
  }
  p.tokens = M < tokens ? static_cast<int>(M) : tokens;
  cudaStream_t s = enter(device, stream);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto go = [&](auto bits_tag) {
      constexpr int B = decltype(bits_tag)::value;
      if (m == 1) launch<T, B, 1>(p, s);
      else if (m <= 28) launch<T, B, 28>(p, s);
      else launch<T, B, kMaxCore>(p, s);
    };
    if (bits == 8) go(std::integral_constant<int, 8>{});
    else go(std::integral_constant<int, 4>{});
  });
  check_launch("quantize_act_hadamard");
}

}  // namespace modaq
