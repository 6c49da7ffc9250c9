// weight_only_dequant: W[n, k] = (q[n, k] - zero[n, g]) * scale[n, g] -> fp16 / bf16 [N, K].
//
// The large-M (prefill) path of the weight-only formats: dequantize, then a cuBLAS GEMM, whose
// tensor-core rate the fused kernels do not reach once M is in the hundreds.  The op
// dequantizes in row chunks into one reused buffer sized to stay in L2, so the fp16 copy
// rarely travels to DRAM (modaq/ops/fast_weight_only.py).  Reads the packed layout of
// python/modaq/weight_only_layout.py with the GEMV's register decode (weight_only.cuh);
// (q - z) is exact and its product with the fp16 scale is exact in fp32, so the output equals
// the reference's fp32 dequantized weight rounded to the dtype, bit for bit.  One warp per
// 16 x 256 block, staged through shared memory for coalesced row stores.
// Roofline: reads 3/8 or 1/2 byte per weight, writes 2 (to L2 when chunked): for 3584 x 18944
// ~9 us of DRAM reads, ~55 us if the 136 MB fp16 copy had to reach DRAM.
#include <stdexcept>

#include "weight_only.cuh"

namespace modaq {
namespace woq {
namespace {

constexpr int kDequantWarps = 4;

template <typename T, int BITS, int GROUP>
__global__ void __launch_bounds__(kDequantWarps * 32) weight_only_dequant_kernel(
    const uint8_t* __restrict__ qweight, const __half* __restrict__ scales, const uint8_t* __restrict__ zeros,
    T* __restrict__ w, int N, int K, int k_tiles, int blocks) {
  // The decoded fragments are scattered (8 rows x 16 bytes per warp store), so each warp
  // stages its 16 x 256 block in shared memory (rows padded by 16 bytes: the 4-byte writes of
  // a warp hit 32 distinct banks) and writes it back as 16 coalesced 512-byte row segments.
  constexpr int kUnitsPerGroup = GROUP / kUnitK;
  constexpr int kRow = kTileK + 8;
  __shared__ __align__(16) T staged[kDequantWarps][kTileN * kRow];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int block = blockIdx.x * kDequantWarps + warp;
  if (block >= blocks) return;  // warps are independent: no CTA-wide barrier below
  const int tile = block / k_tiles, kt = block - tile * k_tiles;
  Block<BITS, GROUP> blk;
  blk.load(qweight, scales, zeros, block, lane);
  const int g = lane >> 2, t = lane & 3;
  T* sm = staged[warp];
  ZeroConsts<T, BITS> zc;
#pragma unroll
  for (int u = 0; u < kUnits; ++u) {
    const int j = u / kUnitsPerGroup;
    if (u % kUnitsPerGroup == 0) zc.set(blk.zero(j, 0), blk.zero(j, 1));
    uint32_t words[Bits<BITS>::kWords];
    unit_words<BITS>(blk.q, u, words);
    uint32_t a[16];
    decode_unit<T>(words, zc, a);
    const float2 sc = blk.scale(j);
#pragma unroll
    for (int i = 0; i < 16; ++i) {  // slot i = 4 s + j: row g + 8 (j & 1), k-half j >> 1
      const int rh = i & 1, kh = (i >> 1) & 1, s = i >> 2;
      const float2 v = Pair<T>::to_float2(a[i]);
      const float f = rh ? sc.y : sc.x;
      *reinterpret_cast<uint32_t*>(sm + (g + 8 * rh) * kRow + u * kUnitK + 16 * s + 8 * kh + 2 * t) =
          Pair<T>::from_float2(v.x * f, v.y * f);
    }
  }
  __syncwarp();
  const int k = kt * kTileK + lane * 8;  // K % 64 == 0: a lane's 8 values are all in or all out
  if (k >= K) return;
#pragma unroll 4
  for (int r = 0; r < kTileN; ++r) {
    const int n = tile * kTileN + r;
    if (n < N) *reinterpret_cast<uint4*>(w + (size_t)n * K + k) = *reinterpret_cast<const uint4*>(sm + r * kRow + lane * 8);
  }
}

template <typename T, int BITS>
void launch_dequant(const uint8_t* q, const __half* s, const uint8_t* z, T* w, int N, int K, int group,
                    cudaStream_t stream) {
  const int k_tiles = (K + kTileK - 1) / kTileK;
  const int blocks = (N + kTileN - 1) / kTileN * k_tiles;
  const dim3 grid((blocks + kDequantWarps - 1) / kDequantWarps);
  if (group == 128)
    weight_only_dequant_kernel<T, BITS, 128><<<grid, kDequantWarps * 32, 0, stream>>>(q, s, z, w, N, K, k_tiles, blocks);
  else
    weight_only_dequant_kernel<T, BITS, 64><<<grid, kDequantWarps * 32, 0, stream>>>(q, s, z, w, N, K, k_tiles, blocks);
  check_launch("weight_only_dequant");
}

}  // namespace
}  // namespace woq

void weight_only_dequant(std::uintptr_t qweight, std::uintptr_t scales, std::uintptr_t zeros, std::uintptr_t w,
                         int64_t N, int64_t K, int bits, int group_size, int dtype, int device,
                         std::uintptr_t stream) {
  if (bits != 3 && bits != 4) throw std::invalid_argument("modaq._C.weight_only_dequant: bits must be 3 or 4");
  if (group_size != 64 && group_size != 128)
    throw std::invalid_argument("modaq._C.weight_only_dequant: group_size must be 64 or 128");
  if (K % 64 || N < 1 || N > (1 << 30) || K > (1 << 30))
    throw std::invalid_argument("modaq._C.weight_only_dequant: K must be a positive multiple of 64");
  cudaStream_t s = enter(device, stream);
  const auto* q = reinterpret_cast<const uint8_t*>(qweight);
  const auto* sc = reinterpret_cast<const __half*>(scales);
  const auto* z = reinterpret_cast<const uint8_t*>(zeros);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* out = reinterpret_cast<T*>(w);
    if (bits == 3) woq::launch_dequant<T, 3>(q, sc, z, out, (int)N, (int)K, group_size, s);
    else woq::launch_dequant<T, 4>(q, sc, z, out, (int)N, (int)K, group_size, s);
  });
}

}  // namespace modaq
