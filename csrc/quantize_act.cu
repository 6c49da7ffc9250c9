// quantize_act: per-token symmetric dynamic quantization of activations.
//
// Computes, for each row m of X [M, K] (fp16 / bf16, row-major):
//     x'    = x / smooth                      (optional per-channel smoothing, fp32 IEEE div)
//     inv   = qmax / absmax(x')   (0 if absmax == 0 or the row holds NaN)
//     q     = clamp(rint(x' * inv), -qmax, qmax)     (NaN -> 0)
//     scale = absmax / qmax       (NaN if the row holds NaN, so NaN reaches the GEMM output)
// with qmax = 127 (int8 out, [M, K]) or 7 (int4 out, two's-complement nibbles packed two per
// byte, even k in the low nibble, [M, K/2]).  The fp32 operations are the ones
// modaq.formats.quantize_act_sym performs, so the result matches the reference bit for bit.
//
// Layout / roofline: one block per token; pass 1 reads the row with 16-byte loads and reduces
// absmax, pass 2 re-reads it (from L1/L2) and writes q.  Bytes: 2K read + K (or K/2) written
// + 4 per token, so the kernel is bandwidth-bound; the online-transform variants live in the
// fused rotation kernels.
#include "common.cuh"

namespace modaq {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float load_smoothed(const T* x, const float* smooth, int64_t k) {
  float v = to_float(x[k]);
  return smooth ? v / smooth[k] : v;
}

__device__ __forceinline__ float block_reduce_max(float v, bool nan, bool* any_nan) {
  __shared__ float warp_max[kThreads / 32];
  __shared__ int warp_nan[kThreads / 32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int flag = nan;
  for (int o = 16; o > 0; o >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    flag |= __shfl_xor_sync(0xffffffff, flag, o);
  }
  if (lane == 0) { warp_max[warp] = v; warp_nan[warp] = flag; }
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? warp_max[lane] : 0.f;
    flag = lane < kThreads / 32 ? warp_nan[lane] : 0;
    for (int o = 16; o > 0; o >>= 1) {
      v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
      flag |= __shfl_xor_sync(0xffffffff, flag, o);
    }
    if (lane == 0) { warp_max[0] = v; warp_nan[0] = flag; }
  }
  __syncthreads();
  *any_nan = warp_nan[0];
  return warp_max[0];
}

__device__ __forceinline__ int quantize_one(float v, float inv, int qmax) {
  float r = rintf(v * inv);
  if (r != r) r = 0.f;  // NaN (NaN input, or inf * 0)
  return static_cast<int>(fminf(fmaxf(r, -static_cast<float>(qmax)), static_cast<float>(qmax)));
}

template <typename T, int BITS>
__global__ void __launch_bounds__(kThreads) quantize_act_kernel(
    const T* __restrict__ x, const float* __restrict__ smooth, uint8_t* __restrict__ q,
    float* __restrict__ scale, int64_t K) {
  constexpr int qmax = BITS == 8 ? 127 : 7;
  const T* row = x + blockIdx.x * K;
  float amax = 0.f;
  bool nan = false;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    float v = load_smoothed(row, smooth, k);
    nan |= (v != v);
    amax = fmaxf(amax, fabsf(v));
  }
  bool any_nan;
  amax = block_reduce_max(amax, nan, &any_nan);
  float inv = (amax > 0.f && !any_nan) ? static_cast<float>(qmax) / amax : 0.f;
  if (threadIdx.x == 0) scale[blockIdx.x] = any_nan ? __int_as_float(0x7fc00000) : amax / qmax;
  if (BITS == 8) {
    int8_t* out = reinterpret_cast<int8_t*>(q) + blockIdx.x * K;
    for (int64_t k = threadIdx.x; k < K; k += kThreads)
      out[k] = static_cast<int8_t>(quantize_one(load_smoothed(row, smooth, k), inv, qmax));
  } else {
    uint8_t* out = q + blockIdx.x * (K / 2);
    for (int64_t p = threadIdx.x; p < K / 2; p += kThreads) {
      int lo = quantize_one(load_smoothed(row, smooth, 2 * p), inv, qmax);
      int hi = quantize_one(load_smoothed(row, smooth, 2 * p + 1), inv, qmax);
      out[p] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
    }
  }
}

}  // namespace

void quantize_act(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t q, std::uintptr_t scale,
                  int64_t M, int64_t K, int bits, int dtype, int device, std::uintptr_t stream) {
  if (M == 0) return;
  cudaStream_t s = enter(device, stream);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto* xp = reinterpret_cast<const T*>(x);
    auto* sp = reinterpret_cast<const float*>(smooth);
    auto* qp = reinterpret_cast<uint8_t*>(q);
    auto* scp = reinterpret_cast<float*>(scale);
    if (bits == 8)
      quantize_act_kernel<T, 8><<<M, kThreads, 0, s>>>(xp, sp, qp, scp, K);
    else
      quantize_act_kernel<T, 4><<<M, kThreads, 0, s>>>(xp, sp, qp, scp, K);
  });
  check_launch("quantize_act_kernel");
}

}  // namespace modaq
