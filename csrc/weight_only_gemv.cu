// weight_only_gemv: fused dequant GEMV / skinny GEMM for W3A16 and W4A16, M = 1..16.
//
// Computes y[M, N] = x[M, K] @ ((q - zero) * scale)^T (+ bias) with q 3- or 4-bit in groups of
// 64 / 128 along K, x / y fp16 or bf16, fp32 accumulation, no dequantized weight in memory.
// Layout: 16-row x 256-k blocks in mma fragment order (python/modaq/weight_only_layout.py);
// kernels: weight_only_gemv.cuh (shared-memory pipelined) and weight_only_gemv_regs.cuh
// (register pipelined); the choice between them, the K split and the launch:
// weight_only_gemv_launch.cuh.  This file holds the entry point and the 3-bit instantiations;
// weight_only_gemv_w4.cu the 4-bit ones.
#include <stdexcept>

#include "weight_only_gemv_launch.cuh"

namespace modaq {
namespace woq {

void dispatch_gemv_w3(const GemvArgs& p, int group_size, int dtype, int splits, int kernel, int device,
                      cudaStream_t stream) {
  dispatch_gemv<3>(p, group_size, dtype, splits, kernel, device, stream);
}

}  // namespace woq

void weight_only_gemv(std::uintptr_t x, std::uintptr_t qweight, std::uintptr_t scales, std::uintptr_t zeros,
                      std::uintptr_t bias, int bias_dtype, std::uintptr_t y, int64_t M, int64_t N, int64_t K,
                      int bits, int group_size, int dtype, int splits, int device, std::uintptr_t stream,
                      int kernel) {
  if (M < 1 || M > 16) throw std::invalid_argument("modaq._C.weight_only_gemv: M must be in [1, 16]");
  if (bits != 3 && bits != 4) throw std::invalid_argument("modaq._C.weight_only_gemv: bits must be 3 or 4");
  if (group_size != 64 && group_size != 128)
    throw std::invalid_argument("modaq._C.weight_only_gemv: group_size must be 64 or 128");
  if (K % 64 || N < 1 || N > (1 << 30) || K > (1 << 30))
    throw std::invalid_argument("modaq._C.weight_only_gemv: K must be a positive multiple of 64");
  if (K % group_size) throw std::invalid_argument("modaq._C.weight_only_gemv: K must be a multiple of group_size");
  if (kernel < woq::kAutoKernel || kernel > woq::kShallowKernel)
    throw std::invalid_argument(
        "modaq._C.weight_only_gemv: kernel must be 0 (auto), 1 (smem), 2 (regs) or 3 (smem, shallow ring)");
  woq::GemvArgs p = {};
  p.x = reinterpret_cast<const void*>(x);
  p.qweight = reinterpret_cast<const uint8_t*>(qweight);
  p.scales = reinterpret_cast<const __half*>(scales);
  p.zeros = reinterpret_cast<const uint8_t*>(zeros);
  p.bias = reinterpret_cast<const void*>(bias);
  p.bias_dtype = bias_dtype;
  p.y = reinterpret_cast<void*>(y);
  p.M = static_cast<int>(M);
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  cudaStream_t s = enter(device, stream);
  if (bits == 3) woq::dispatch_gemv_w3(p, group_size, dtype, splits, kernel, device, s);
  else woq::dispatch_gemv_w4(p, group_size, dtype, splits, kernel, device, s);
}

}  // namespace modaq
