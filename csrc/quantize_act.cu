// quantize_act: per-token symmetric dynamic quantization of activations (no online transform;
// the transform variants are in quantize_act_transform.cu).
//
// Computes, for each row m of X [M, K] (fp16 / bf16, row-major):
//     x'    = x / smooth                      (optional per-channel smoothing, fp32 IEEE div)
//     r     = clip * absmax(x')   (clip = fp32 clip_ratio in (0, 1]; 1: r = absmax exactly)
//     inv   = qmax / r            (0 if r == 0 or the row holds NaN)
//     q     = clamp(rint(x' * inv), -qmax, qmax)     (NaN -> 0; clipped values saturate)
//     scale = r / qmax            (NaN if the row holds NaN, so NaN reaches the GEMM output)
// with qmax = 127 (int8 out, [M, K]) or 7 (int4 out, uint8 [M, K/2] in the half-block-paired
// layout of modaq.formats.pack_a4: byte j of a 128-block holds values j and j + 64).  The
// fp32 operations are the ones modaq.formats.quantize_act_sym performs: bit-identical output.
//
// Layout / roofline: the fast kernel keeps each row in registers (16-byte loads, <= 8 vectors
// per thread, tpr = 32..512 threads per row, several rows per block for small K), reduces the
// absmax with shuffles (+ shared memory across warps), then quantizes from the registers:
// X is read once.  Bytes: 2K read + K (int8) or K/2 (int4) written + 4 per token, so it is
// bound by memory bandwidth (aim: >= 80% of a device-to-device copy at M >= 1024).  int4
// rows are staged as int8 in shared memory and paired there (partners are 64 values apart).
// Any other shape (K % 8 != 0, unaligned x, K > 32768) takes a simple one-block-per-row kernel.
#include "quantize_act_common.cuh"

namespace modaq {
namespace {

constexpr int kVecPerThread = 8;
constexpr int kMaxTpr = 512;

// Max / NaN-flag reduction over the tpr consecutive threads that own one row.
__device__ __forceinline__ void group_reduce(float& amax, bool& nan, int tpr) {
  __shared__ float warp_max[32];
  __shared__ int warp_nan[32];
  int flag = nan;
  const int width = tpr < 32 ? tpr : 32;
  for (int o = width / 2; o > 0; o >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    flag |= __shfl_xor_sync(0xffffffffu, flag, o);
  }
  if (tpr > 32) {  // uniform over the block
    const int warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) { warp_max[warp] = amax; warp_nan[warp] = flag; }
    __syncthreads();
    const int per_row = tpr >> 5, first = (warp / per_row) * per_row;
    for (int w = 0; w < per_row; ++w) {
      amax = fmaxf(amax, warp_max[first + w]);
      flag |= warp_nan[first + w];
    }
  }
  nan = flag;
}

template <typename T, int BITS>
__global__ void __launch_bounds__(kMaxTpr) quantize_rows_vec_kernel(
    const T* __restrict__ x, const float* __restrict__ smooth, uint8_t* __restrict__ q,
    float* __restrict__ scale, int64_t M, int K, int tpr, float clip) {
  constexpr int qmax = BITS == 8 ? 127 : 7;
  extern __shared__ uint2 staged_raw[];  // BITS == 4: int8 rows [rows per block][K]
  const int sub = threadIdx.x / tpr, t = threadIdx.x - sub * tpr;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / tpr) + sub;
  const bool active = row < M;
  const int nvec = K >> 3;
  const uint4* xr = reinterpret_cast<const uint4*>(x + (active ? row : 0) * K);

  uint4 raw[kVecPerThread];
  float amax = 0.f;
  bool nan = false;
#pragma unroll
  for (int i = 0; i < kVecPerThread; ++i) {
    const int v = t + i * tpr;
    if (active && v < nvec) raw[i] = __ldg(xr + v);
  }
#pragma unroll
  for (int i = 0; i < kVecPerThread; ++i) {
    const int v = t + i * tpr;
    if (active && v < nvec) {
      float f[8];
      smoothed8<T>(raw[i], smooth, static_cast<int64_t>(v) * 8, f);
#pragma unroll
      for (int j = 0; j < 8; ++j) { nan |= f[j] != f[j]; amax = fmaxf(amax, fabsf(f[j])); }
    }
  }
  group_reduce(amax, nan, tpr);
  amax = clipped_range(amax, clip);
  if (active && t == 0) scale[row] = token_scale(amax, nan, qmax);
  const float inv = inv_scale(amax, nan, qmax);

  int8_t* staged = reinterpret_cast<int8_t*>(staged_raw) + sub * K;
#pragma unroll
  for (int i = 0; i < kVecPerThread; ++i) {
    const int v = t + i * tpr;
    if (active && v < nvec) {
      float f[8];
      smoothed8<T>(raw[i], smooth, static_cast<int64_t>(v) * 8, f);
      const uint2 packed = quantize8(f, inv, qmax);
      if (BITS == 8)
        *reinterpret_cast<uint2*>(q + row * K + v * 8) = packed;
      else
        *reinterpret_cast<uint2*>(staged + v * 8) = packed;
    }
  }
  if (BITS == 4) {
    __syncthreads();
    if (!active) return;
    uint8_t* out = q + row * (K / 2);
    const int full = K >> 7;  // complete 128-blocks: 8 chunks of 8 bytes each
    if ((K & 15) == 0) {
      for (int ch = t; ch < full * 8; ch += tpr) {
        const int lo_k = (ch >> 3) * 128 + (ch & 7) * 8;
        const uint2 lo = *reinterpret_cast<const uint2*>(staged + lo_k);
        const uint2 hi = *reinterpret_cast<const uint2*>(staged + lo_k + 64);
        // byte b of the result: low nibble from lo byte b, high nibble from hi byte b
        const uint2 res = make_uint2((lo.x & 0x0F0F0F0Fu) | ((hi.x & 0x0F0F0F0Fu) << 4),
                                     (lo.y & 0x0F0F0F0Fu) | ((hi.y & 0x0F0F0F0Fu) << 4));
        *reinterpret_cast<uint2*>(out + (ch >> 3) * 64 + (ch & 7) * 8) = res;
      }
    }
    const int first_byte = ((K & 15) == 0) ? full * 64 : 0;
    for (int j = first_byte + t; j < K / 2; j += tpr) {
      int lo, hi;
      paired_indices(j, K, lo, hi);
      out[j] = pack_nibbles(staged[lo], staged[hi]);
    }
  }
}

// Fallback for any shape: one block per token, strided scalar loads (X read twice, from L2).
constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float load_smoothed(const T* x, const float* smooth, int64_t k) {
  float v = to_float(x[k]);
  return smooth ? v / smooth[k] : v;
}

template <typename T, int BITS>
__global__ void __launch_bounds__(kThreads) quantize_rows_kernel(
    const T* __restrict__ x, const float* __restrict__ smooth, uint8_t* __restrict__ q,
    float* __restrict__ scale, int64_t K, float clip) {
  constexpr int qmax = BITS == 8 ? 127 : 7;
  const T* row = x + blockIdx.x * K;
  float amax = 0.f;
  bool nan = false;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    const float v = load_smoothed(row, smooth, k);
    nan |= (v != v);
    amax = fmaxf(amax, fabsf(v));
  }
  group_reduce(amax, nan, kThreads);
  amax = clipped_range(amax, clip);
  if (threadIdx.x == 0) scale[blockIdx.x] = token_scale(amax, nan, qmax);
  const float inv = inv_scale(amax, nan, qmax);
  if (BITS == 8) {
    int8_t* out = reinterpret_cast<int8_t*>(q) + blockIdx.x * K;
    for (int64_t k = threadIdx.x; k < K; k += kThreads)
      out[k] = static_cast<int8_t>(quantize_one(load_smoothed(row, smooth, k), inv, qmax));
  } else {
    uint8_t* out = q + blockIdx.x * (K / 2);
    for (int j = threadIdx.x; j < K / 2; j += kThreads) {
      int lo, hi;
      paired_indices(j, static_cast<int>(K), lo, hi);
      out[j] = pack_nibbles(quantize_one(load_smoothed(row, smooth, lo), inv, qmax),
                            quantize_one(load_smoothed(row, smooth, hi), inv, qmax));
    }
  }
}

template <typename T, int BITS>
void launch(const T* x, const float* smooth, uint8_t* q, float* scale, int64_t M, int64_t K,
            float clip, cudaStream_t s) {
  const bool aligned = (reinterpret_cast<std::uintptr_t>(x) & 15) == 0 &&
                       (reinterpret_cast<std::uintptr_t>(smooth) & 15) == 0 &&
                       (reinterpret_cast<std::uintptr_t>(q) & 7) == 0;
  int tpr = 32;
  while (tpr * kVecPerThread * 8 < K) tpr *= 2;
  if (K % 8 == 0 && aligned && tpr <= kMaxTpr) {
    const int threads = tpr < 256 ? 256 : tpr;
    const int rows = threads / tpr;
    const size_t smem = BITS == 4 ? static_cast<size_t>(rows) * K : 0;
    const int64_t blocks = (M + rows - 1) / rows;
    quantize_rows_vec_kernel<T, BITS><<<static_cast<unsigned>(blocks), threads, smem, s>>>(x, smooth, q, scale, M,
                                                                    static_cast<int>(K), tpr, clip);
  } else {
    quantize_rows_kernel<T, BITS><<<static_cast<unsigned>(M), kThreads, 0, s>>>(x, smooth, q, scale, K, clip);
  }
}

}  // namespace

void quantize_act(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t q, std::uintptr_t scale,
                  int64_t M, int64_t K, int bits, int dtype, int device, std::uintptr_t stream,
                  float clip_ratio) {
  if (M == 0) return;
  cudaStream_t s = enter(device, stream);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto* xp = reinterpret_cast<const T*>(x);
    auto* sp = reinterpret_cast<const float*>(smooth);
    auto* qp = reinterpret_cast<uint8_t*>(q);
    auto* scp = reinterpret_cast<float*>(scale);
    if (bits == 8)
      launch<T, 8>(xp, sp, qp, scp, M, K, clip_ratio, s);
    else
      launch<T, 4>(xp, sp, qp, scp, M, K, clip_ratio, s);
  });
  check_launch("quantize_act");
}

}  // namespace modaq
