// quantize_act with the randomized Hadamard transform, for the sizes quantize_act_hadamard.cu's
// kernel does not take (p < 8, a token over its shared-memory budget, inputs not 16-byte
// aligned): one pass reads X [M, K] (fp16 / bf16), applies smoothing and the transform in
// fp32-accurate arithmetic, and writes int8 [M, K] (or packed int4 [M, K/2], half-block paired
// like modaq.formats.pack_a4) + fp32 per-token scales.
//
// Each token x (a row of K = m * p values) is viewed as X_r [m, p] (row-major) and transformed
// to (x * signs) @ H_K / sqrt(K), H_K = H_m (x) S_p (modaq.hadamard), i.e. H_m^T (X_r S_p):
// X_r S_p is a fast Walsh-Hadamard transform of each row, done on the CUDA cores with the
// reference's butterfly order (bit-identical fp32); H_m (+-1, exact in bf16) multiplies on the
// tensor cores against the 3-term bf16 split of the FWHT output (fp32-accurate); the result
// times 1 / sqrt(K) as in the reference;
// then per-token quantization exactly as quantize_act.cu (scale = clip * absmax / qmax with the
// activation clip ratio clip in (0, 1], values beyond the clipped range saturate, NaN rows ->
// NaN scale, zero rows -> scale 0).  q can differ from the fp32 reference by +-1 only where
// the transform's rounding lands within an ulp of a rounding boundary.
//
// Layout: a block owns `tokens` consecutive tokens (1..8) and keeps them in shared memory as
// fp32 [tokens][m][s], s = p padded to s % 16 == 4 so that the column reads of the
// tensor-core B fragments are bank-conflict free.  The H_m product works in place on 8-column
// strips, one warp per strip, all m output rows in registers; H_m^T arrives in mma fragment
// order (modaq.ops.fast_activation builds it once per core): A fragments [row tile][k step]
// [lane] (uint4).
#include "quantize_act_transform.cuh"

#include <cmath>
#include <stdexcept>

namespace modaq {

bool transform_fits(int n1, int n2);

namespace {

// ------------------------------------------------------------------- Hadamard: load + FWHT

// X (* 1 / smooth, * signs) into shared memory; with 16-byte vectors the first three FWHT
// stages are done in registers.  Returns the number of FWHT stages already applied.
template <typename T>
__device__ int load_tokens(const Params& p, float* buf) {
  const int K = p.n1 * p.n2;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * p.tokens;
  const T* x = static_cast<const T*>(p.x);
  if (p.vec) {
    const int nv = K >> 3;
    for (int idx = threadIdx.x; idx < p.tokens * nv; idx += kThreads) {
      const int tok = idx / nv, k = (idx - tok * nv) * 8;
      float f[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      if (row0 + tok < p.M) {
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(x + (row0 + tok) * K + k));
        hadamard_chunk8<T>(raw, p.smooth, p.signs, k, f);
      }
      const int b = k / p.n2, i = k - b * p.n2;
      float4* dst = reinterpret_cast<float4*>(buf + (tok * p.n1 + b) * p.s + i);
      dst[0] = make_float4(f[0], f[1], f[2], f[3]);
      dst[1] = make_float4(f[4], f[5], f[6], f[7]);
    }
    return 3;
  }
  for (int idx = threadIdx.x; idx < p.tokens * K; idx += kThreads) {
    const int tok = idx / K, k = idx - tok * K;
    float v = 0.f;
    if (row0 + tok < p.M) {
      v = to_float(x[(row0 + tok) * K + k]);
      if (p.smooth) v = v / p.smooth[k];
      if (p.signs) v = v * p.signs[k];
    }
    const int b = k / p.n2;
    buf[(tok * p.n1 + b) * p.s + (k - b * p.n2)] = v;
  }
  return 0;
}

// ------------------------------------------------------------ tensor-core stages

// Y = H_m^T Z in place, one warp per (token, 8-column strip), all n1 rows in registers
// (MT >= ceil(n1 / 16) row tiles), the strip's B fragments read from shared memory.
template <int MT>
__device__ void left_multiply(const Params& p, float* buf) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int mt = (p.n1 + 15) >> 4, ct_n = (p.n2 + 7) >> 3;
  for (int unit = warp; unit < p.tokens * ct_n; unit += kWarps) {
    const int tok = unit / ct_n, ct = unit - tok * ct_n;
    float* zt = buf + tok * p.n1 * p.s;
    const int n = ct * 8 + g;
    auto load = [&](int k) -> float { return (k < p.n1 && n < p.n2) ? zt[k * p.s + n] : 0.f; };
    float acc[MT][4] = {};
    mix_strip_bf16<MT>(acc, p.left, mt, load);
    __syncwarp();
    const int col = ct * 8 + 2 * c;
#pragma unroll
    for (int rt = 0; rt < MT; ++rt) {
      if (rt >= mt) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int i = rt * 16 + g + 8 * h;
        if (i >= p.n1) continue;
        if (col < p.n2) zt[i * p.s + col] = acc[rt][2 * h] * p.stage2_scale;
        if (col + 1 < p.n2) zt[i * p.s + col + 1] = acc[rt][2 * h + 1] * p.stage2_scale;
      }
    }
  }
}

// ------------------------------------------------------------------ quantization

// Per-token absmax and NaN flag of the (final_scale-multiplied) values: one warp per row b.
__device__ void token_absmax(const Params& p, const float* buf, unsigned* amax_bits, int* nan_flag) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int unit = warp; unit < p.tokens * p.n1; unit += kWarps) {
    const float* r = buf + unit * p.s;
    float m = 0.f;
    int nan = 0;
    for (int i = lane; i < p.n2; i += 32) {
      const float v = r[i] * p.final_scale;
      nan |= v != v;
      m = fmaxf(m, fabsf(v));
    }
    for (int o = 16; o > 0; o >>= 1) {
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
      nan |= __shfl_xor_sync(0xffffffffu, nan, o);
    }
    if (lane == 0) {
      const int tok = unit / p.n1;
      atomicMax(amax_bits + tok, __float_as_uint(m));  // non-negative floats order as uints
      if (nan) atomicOr(nan_flag + tok, 1);
    }
  }
}

// ------------------------------------------------------------------------- kernels

template <typename T, int BITS, int MT>
__global__ void __launch_bounds__(kThreads, 1) quantize_act_transform_kernel(Params p) {
  extern __shared__ float4 smem[];
  float* buf = reinterpret_cast<float*>(smem);
  __shared__ unsigned amax_bits[kMaxTokens];
  __shared__ int nan_flag[kMaxTokens];
  if (threadIdx.x < kMaxTokens) { amax_bits[threadIdx.x] = 0u; nan_flag[threadIdx.x] = 0; }
  const int done = load_tokens<T>(p, buf);
  __syncthreads();
  fwht_rows(p, buf, done);
  if (p.n1 > 1) left_multiply<MT>(p, buf);
  __syncthreads();
  token_absmax(p, buf, amax_bits, nan_flag);
  __syncthreads();
  quantize_tokens<BITS>(p, buf, static_cast<int64_t>(blockIdx.x) * p.tokens, amax_bits, nan_flag);
}

constexpr int kMaxRowTiles = 11;  // cores up to 176

template <typename T, int BITS, int MT>
void launch_transform(const Params& p, cudaStream_t s) {
  auto kernel = quantize_act_transform_kernel<T, BITS, MT>;
  const size_t smem = token_bytes(p.n1, p.n2) * p.tokens;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
             "cudaFuncSetAttribute(quantize_act_transform)");
  const int64_t blocks = (p.M + p.tokens - 1) / p.tokens;
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, s>>>(p);
}

}  // namespace

bool transform_fits(int n1, int n2) {
  return n1 >= 1 && n2 >= 1 && (n1 + 15) / 16 <= kMaxRowTiles && token_bytes(n1, n2) <= kMaxTokenBytes;
}

// The tensor-core Hadamard (any core up to 176; quantize_act_hadamard.cu sends it what it does not take).
void quantize_act_hadamard_tc(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t signs,
                              std::uintptr_t left, std::uintptr_t q, std::uintptr_t scale, int64_t M,
                              int m, int p2, int bits, int dtype, int device, std::uintptr_t stream,
                              float clip_ratio) {
  if (M == 0) return;
  if (!transform_fits(m, p2))
    throw std::invalid_argument("modaq._C: Hadamard size too large for the fused kernel");
  cudaStream_t s = enter(device, stream);
  Params p{};
  p.x = reinterpret_cast<const void*>(x);
  p.smooth = reinterpret_cast<const float*>(smooth);
  p.signs = reinterpret_cast<const float*>(signs);
  p.left = reinterpret_cast<const uint4*>(left);
  p.q = reinterpret_cast<uint8_t*>(q);
  p.scale = reinterpret_cast<float*>(scale);
  p.M = M;
  p.n1 = m;
  p.n2 = p2;
  const float inv_sqrt = static_cast<float>(1.0 / std::sqrt(static_cast<double>(m) * p2));
  p.stage2_scale = m > 1 ? inv_sqrt : 1.f;
  p.final_scale = m > 1 ? 1.f : inv_sqrt;
  p.clip = clip_ratio;
  p.s = padded_stride(p2);
  p.token_stride = m * p.s;
  const int fit = static_cast<int>((48 * 1024) / token_bytes(m, p2));
  const int tokens = fit < 1 ? 1 : (fit > kMaxTokens ? kMaxTokens : fit);
  p.tokens = M < tokens ? static_cast<int>(M) : tokens;
  auto aligned = [](const void* ptr) { return (reinterpret_cast<std::uintptr_t>(ptr) & 15) == 0; };
  p.vec = (p2 % 8 == 0) && aligned(p.x) && aligned(p.smooth) && aligned(p.signs);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool small = (m + 15) / 16 <= 4;
    if (bits == 8) {
      if (small) launch_transform<T, 8, 4>(p, s);
      else launch_transform<T, 8, kMaxRowTiles>(p, s);
    } else {
      if (small) launch_transform<T, 4, 4>(p, s);
      else launch_transform<T, 4, kMaxRowTiles>(p, s);
    }
  });
  check_launch("quantize_act_hadamard");
}

}  // namespace modaq
