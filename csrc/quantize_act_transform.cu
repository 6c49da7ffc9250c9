// quantize_act with a fused online transform: one pass reads X [M, K] (fp16 / bf16), applies
// smoothing and the transform in fp32-accurate arithmetic, and writes int8 [M, K] (or packed
// int4 [M, K/2], half-block paired like modaq.formats.pack_a4) + fp32 per-token scales.
//
// Each token x (a row of K = n1 * n2 values) is viewed as X_r [n1, n2] (row-major) and
// transformed to Y_r = L^T (X_r R):
//   Hadamard  (x * signs) @ H_K / sqrt(K), H_K = H_m (x) S_p  (modaq.hadamard): n1 = m, n2 = p.
//             Only the sizes quantize_act_hadamard.cu's kernel does not take (p < 8, a token
//             over its shared-memory budget, inputs not 16-byte aligned) come here.  X_r S_p is
//             a fast Walsh-Hadamard transform of each row, done on the CUDA cores with the
//             reference's butterfly order (bit-identical fp32); L = H_m
//             (+-1, exact in bf16) multiplies on the tensor cores against the 3-term bf16 split
//             of the FWHT output (fp32-accurate); the result times 1 / sqrt(K) as in the reference.
//   Kronecker x @ (P1 (x) P2) = P1^T X_r P2: both products on the tensor cores, both operands
//             split into 3 bf16 terms (six term pairs per product: ~2^-24 relative error).
// then per-token quantization exactly as quantize_act.cu (scale = clip * absmax / qmax with the
// activation clip ratio clip in (0, 1], values beyond the clipped range saturate, NaN rows ->
// NaN scale, zero rows -> scale 0).  q can differ from the fp32 reference by +-1 only where
// the transform's rounding lands within an ulp of a rounding boundary.
//
// Layout: a block owns `tokens` consecutive tokens (1..8) and keeps them in shared memory as
// fp32 [tokens][n1][s], s = n2 padded to s % 16 == 4 so that the column reads of the
// tensor-core B fragments are bank-conflict free.  Stage 1 (Kronecker) reads A fragments
// straight from X in global memory; stage 2 works in place on 8-column strips, one warp per
// strip, all n1 output rows in registers.  The constant operands arrive pre-split in mma
// fragment order (modaq.ops.fast_activation builds them once per matrix): L^T as A fragments
// [row tile][k step][term][lane] (uint4), R as B fragments [n tile][k step][term][lane] (uint2).
//
// Roofline: 2K bytes read + K (K/2) written per token.  The Hadamard path costs
// log2(p) adds + 6 * 16 * ceil(m / 16) tensor-core flops per value (m <= 28: bandwidth-bound,
// aim >= 70% of copy); the Kronecker path 12 * (16 ceil(n1/16) + 16 ceil(n2/16)) flops per
// value, which is compute-bound on mma.sync for large factors (e.g. 148 x 128).
#include "quantize_act_transform.cuh"

#include <cmath>
#include <stdexcept>

namespace modaq {

bool transform_fits(int n1, int n2, bool kron);

namespace {

constexpr int kStage1Chunk = 8;  // n tiles (8 columns each) accumulated per stage-1 pass
constexpr int kTerms = 3;        // bf16 terms of a split fp32 operand
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

template <int TA, int TB>
__device__ __forceinline__ void mma_terms(float (&acc)[4], const uint32_t (&a)[TA][4], const uint32_t (&b)[TB][2]) {
#pragma unroll
  for (int ta = 0; ta < TA; ++ta)
#pragma unroll
    for (int tb = 0; tb < TB; ++tb)
      if (ta + tb < kTerms) mma_bf16_16816(acc, a[ta], b[tb]);
}

// Stage 1 (Kronecker): Z = X_r R for every token, A fragments read from X in global memory.
// Unit = (token, 16-row tile); Z is written to the shared buffer (X never lives there).
template <typename T>
__device__ void right_multiply(const Params& p, float* buf) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int K = p.n1 * p.n2, rt_n = (p.n1 + 15) >> 4, ks_n = (p.n2 + 15) >> 4, nt_n = (p.n2 + 7) >> 3;
  const T* x = static_cast<const T*>(p.x);
  for (int unit = warp; unit < p.tokens * rt_n; unit += kWarps) {
    const int tok = unit / rt_n, rt = unit - tok * rt_n;
    const int64_t row = static_cast<int64_t>(blockIdx.x) * p.tokens + tok;
    const T* xr = x + (row < p.M ? row : 0) * K;
    const int i0 = rt * 16 + g;
    auto load = [&](int i, int k) -> float {
      if (row >= p.M || i >= p.n1 || k >= p.n2) return 0.f;
      const int e = i * p.n2 + k;
      const float v = to_float(xr[e]);
      return p.smooth ? v / __ldg(p.smooth + e) : v;
    };
    for (int nc = 0; nc < nt_n; nc += kStage1Chunk) {
      float acc[kStage1Chunk][4] = {};
      for (int ks = 0; ks < ks_n; ++ks) {
        const int k0 = ks * 16 + 2 * c;
        const float v[8] = {load(i0, k0), load(i0, k0 + 1), load(i0 + 8, k0), load(i0 + 8, k0 + 1),
                            load(i0, k0 + 8), load(i0, k0 + 9), load(i0 + 8, k0 + 8), load(i0 + 8, k0 + 9)};
        uint32_t a[kTerms][4];
        split_fragment<kTerms, 4>(v, a);
#pragma unroll
        for (int j = 0; j < kStage1Chunk; ++j) {
          const int nt = nc + j;
          if (nt < nt_n) {
            uint32_t b[kTerms][2];
#pragma unroll
            for (int t = 0; t < kTerms; ++t) {
              const uint2 f = __ldg(p.right + (static_cast<size_t>(nt * ks_n + ks) * kTerms + t) * 32 + lane);
              b[t][0] = f.x;
              b[t][1] = f.y;
            }
            mma_terms<kTerms, kTerms>(acc[j], a, b);
          }
        }
      }
      float* zt = buf + tok * p.n1 * p.s;
#pragma unroll
      for (int j = 0; j < kStage1Chunk; ++j) {
        const int col = (nc + j) * 8 + 2 * c;
        if (nc + j >= nt_n) continue;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int i = i0 + 8 * h;
          if (i >= p.n1) continue;
          if (col < p.n2) zt[i * p.s + col] = acc[j][2 * h];
          if (col + 1 < p.n2) zt[i * p.s + col + 1] = acc[j][2 * h + 1];
        }
      }
    }
  }
}

// Stage 2: Y = L^T Z in place, one warp per (token, 8-column strip), all n1 rows in registers
// (MT >= ceil(n1 / 16) row tiles).  B fragments come from the strip in shared memory, split
// into kTerms bf16 terms; A fragments (L^T, TA terms) from the prepared global array.
template <int MT, int TA>
__device__ void left_multiply(const Params& p, float* buf) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int mt = (p.n1 + 15) >> 4, ct_n = (p.n2 + 7) >> 3;
  for (int unit = warp; unit < p.tokens * ct_n; unit += kWarps) {
    const int tok = unit / ct_n, ct = unit - tok * ct_n;
    float* zt = buf + tok * p.n1 * p.s;
    const int n = ct * 8 + g;
    auto load = [&](int k) -> float { return (k < p.n1 && n < p.n2) ? zt[k * p.s + n] : 0.f; };
    float acc[MT][4] = {};
    for (int ks = 0; ks < mt; ++ks) {
      const int k0 = ks * 16 + 2 * c;
      const float v[4] = {load(k0), load(k0 + 1), load(k0 + 8), load(k0 + 9)};
      uint32_t b[kTerms][2];
      split_fragment<kTerms, 2>(v, b);
#pragma unroll
      for (int rt = 0; rt < MT; ++rt) {
        if (rt < mt) {
          uint32_t a[TA][4];
#pragma unroll
          for (int t = 0; t < TA; ++t) {
            const uint4 f = __ldg(p.left + (static_cast<size_t>(rt * mt + ks) * TA + t) * 32 + lane);
            a[t][0] = f.x; a[t][1] = f.y; a[t][2] = f.z; a[t][3] = f.w;
          }
          mma_terms<TA, kTerms>(acc[rt], a, b);
        }
      }
    }
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

template <typename T, int BITS, int MT, bool KRON>
__global__ void __launch_bounds__(kThreads, 1) quantize_act_transform_kernel(Params p) {
  extern __shared__ float4 smem[];
  float* buf = reinterpret_cast<float*>(smem);
  __shared__ unsigned amax_bits[kMaxTokens];
  __shared__ int nan_flag[kMaxTokens];
  if (threadIdx.x < kMaxTokens) { amax_bits[threadIdx.x] = 0u; nan_flag[threadIdx.x] = 0; }
  if (KRON) {
    right_multiply<T>(p, buf);
    __syncthreads();
    left_multiply<MT, kTerms>(p, buf);
  } else {
    const int done = load_tokens<T>(p, buf);
    __syncthreads();
    fwht_rows(p, buf, done);
    if (p.n1 > 1) left_multiply<MT, 1>(p, buf);
  }
  __syncthreads();
  token_absmax(p, buf, amax_bits, nan_flag);
  __syncthreads();
  quantize_tokens<BITS>(p, buf, amax_bits, nan_flag);
}

int max_row_tiles(bool kron) { return kron ? 18 : 11; }

template <typename T, int BITS, int MT, bool KRON>
void launch_transform(const Params& p, cudaStream_t s) {
  auto kernel = quantize_act_transform_kernel<T, BITS, MT, KRON>;
  const size_t smem = token_bytes(p.n1, p.n2) * p.tokens;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
             "cudaFuncSetAttribute(quantize_act_transform)");
  const int64_t blocks = (p.M + p.tokens - 1) / p.tokens;
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, s>>>(p);
}

template <typename T, int BITS, bool KRON>
void dispatch_tiles(const Params& p, cudaStream_t s) {
  const int mt = (p.n1 + 15) / 16;
  if (mt <= 4) {
    launch_transform<T, BITS, 4, KRON>(p, s);
  } else if (mt <= 11) {
    launch_transform<T, BITS, 11, KRON>(p, s);
  } else {
    if constexpr (KRON) launch_transform<T, BITS, 18, KRON>(p, s);
    else throw std::invalid_argument("modaq._C: Hadamard core order m must be <= 176");
  }
}

template <bool KRON>
void run_transform(Params p, int bits, int dtype, int device, std::uintptr_t stream) {
  if (p.M == 0) return;
  if (!transform_fits(p.n1, p.n2, KRON))
    throw std::invalid_argument("modaq._C: transform factors too large for the fused kernel");
  cudaStream_t s = enter(device, stream);
  p.s = padded_stride(p.n2);
  const size_t budget = KRON ? 96 * 1024 : 48 * 1024;
  int tokens = static_cast<int>(budget / token_bytes(p.n1, p.n2));
  tokens = tokens < 1 ? 1 : (tokens > kMaxTokens ? kMaxTokens : tokens);
  p.tokens = p.M < tokens ? static_cast<int>(p.M) : tokens;
  auto aligned = [](const void* ptr) { return (reinterpret_cast<std::uintptr_t>(ptr) & 15) == 0; };
  p.vec = (p.n2 % 8 == 0) && aligned(p.x) && aligned(p.smooth) && aligned(p.signs);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (bits == 8) dispatch_tiles<T, 8, KRON>(p, s);
    else dispatch_tiles<T, 4, KRON>(p, s);
  });
  check_launch(KRON ? "quantize_act_kron" : "quantize_act_hadamard");
}

}  // namespace

bool transform_fits(int n1, int n2, bool kron) {
  return n1 >= 1 && n2 >= 1 && (n1 + 15) / 16 <= max_row_tiles(kron) && token_bytes(n1, n2) <= kMaxTokenBytes;
}

// The tensor-core Hadamard (any core up to 176; quantize_act_hadamard.cu sends it what it does not take).
void quantize_act_hadamard_tc(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t signs,
                              std::uintptr_t left, std::uintptr_t q, std::uintptr_t scale, int64_t M,
                              int m, int p2, int bits, int dtype, int device, std::uintptr_t stream,
                              float clip_ratio) {
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
  run_transform<false>(p, bits, dtype, device, stream);
}

void quantize_act_kron(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t left, std::uintptr_t right,
                       std::uintptr_t q, std::uintptr_t scale, int64_t M, int n1, int n2, int bits,
                       int dtype, int device, std::uintptr_t stream, float clip_ratio) {
  Params p{};
  p.x = reinterpret_cast<const void*>(x);
  p.smooth = reinterpret_cast<const float*>(smooth);
  p.left = reinterpret_cast<const uint4*>(left);
  p.right = reinterpret_cast<const uint2*>(right);
  p.q = reinterpret_cast<uint8_t*>(q);
  p.scale = reinterpret_cast<float*>(scale);
  p.M = M;
  p.n1 = n1;
  p.n2 = n2;
  p.stage2_scale = 1.f;
  p.final_scale = 1.f;
  p.clip = clip_ratio;
  run_transform<true>(p, bits, dtype, device, stream);
}

}  // namespace modaq
