// quantize_act with the randomized Hadamard transform at decode sizes (a few tokens): one
// thread-block cluster of kC CTAs per token, so a token's transform runs on kC SMs.  The
// persistent kernel (quantize_act_hadamard.cu) gives each token one CTA, which at M = 1 takes
// 30 us for K = 18944 on an H200 (the W4A4 + rotation down_proj at decode); this kernel 12.4 us
// (14336: 8.4 vs 13.5; int_gemm_NVIDIA_H200_hadamard_decode.md).  Its fixed cost (~6 us at
// K = 3584: three cluster barriers, the DSMEM gather) loses to the persistent kernel (5.0 us)
// for short K, so ops.fast_activation routes M <= 16 tokens of K >= 8192 here.
//
// K = m * p with a core m > 1 and p a power of two >= 128; a token is X_r [m, p], transformed
// to H_m^T ((X_r / smooth * signs) S_p) / sqrt(K) as modaq.ops.reference.hadamard_rows.
//   rows    CTA c of the cluster owns rows [c R, min(m, (c + 1) R)), R = ceil(m / kC): loads
//           them (smoothing, signs and FWHT stages h = 1, 2, 4 in registers, hadamard_chunk8),
//           then the stages h >= 8 in shared memory (the reference's butterflies: bit-identical
//           fp32).
//   gather  after a cluster barrier, CTA c copies from every CTA's rows (distributed shared
//           memory) its columns: in each 64 columns the 8 at [8c, 8c + 8), so both values of
//           an int4 byte (columns j and j + 64 of a 128-block) belong to one CTA.
//   mix     Y = H_m^T G on the tensor cores (mix_strip_bf16, as the persistent kernel's large
//           cores: H_m exact in bf16, G split into 3 bf16 terms, fp32 accumulation), times
//           1 / sqrt(K).  Summation order differs from the reference's matmul: q may differ by
//           +-1 where a value lands on a rounding boundary.
//   absmax  per CTA, then across the cluster through distributed shared memory; every CTA
//           quantizes and stores its own columns (quantize_act's fp32 operations).
#include <cooperative_groups.h>

#include <cmath>
#include <stdexcept>
#include <utility>

#include "quantize_act_common.cuh"

namespace modaq {
namespace {

constexpr int kC = 8;          // CTAs per token (portable cluster size)
constexpr int kSThreads = 256;
constexpr int kSWarps = kSThreads / 32;
constexpr int kColGroup = 64 / kC;  // columns of one CTA in every 64
constexpr int kTilesPerTask = 3;    // row tiles of H_m^T per warp task of the mix
constexpr int kGPad = 4;            // G's row stride W + 4: the mix's B-fragment loads are conflict free

struct SParams {
  const void* x;
  const float* smooth;  // [K] or null
  const float* signs;   // [K] or null
  const uint4* left;    // H_m^T as bf16 m16n8k16 A fragments [rt][ks][32 lanes] (mix_strip_bf16)
  uint8_t* q;
  float* scale;
  int m, p, K, R, W;    // R rows per CTA, W = p / kC columns per CTA
  float mix_scale;      // 1 / sqrt(K)
  float clip;
};

// shared memory: rows [R][p] | gathered columns G [m][W + kGPad] | mixed Y [m][W] | the mix's A
// fragments (mt^2 x 32 lanes x 16 bytes, copied in while the rows load: at M = 1 their L2
// latency would otherwise sit in every k step of the mix)
size_t small_smem_bytes(int m, int p) {
  const int R = (m + kC - 1) / kC, W = p / kC, mt = (m + 15) / 16;
  return (static_cast<size_t>(R) * p + static_cast<size_t>(m) * (2 * W + kGPad)) * sizeof(float) +
         static_cast<size_t>(mt) * mt * 32 * sizeof(uint4);
}

template <typename T, int BITS>
__global__ void __launch_bounds__(kSThreads) hadamard_small_kernel(const SParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ float4 smem4[];
  float* rows = reinterpret_cast<float*>(smem4);
  float* G = rows + p.R * p.p;
  const int GS = p.W + kGPad;
  float* Y = G + p.m * GS;
  uint4* left = reinterpret_cast<uint4*>(Y + p.m * p.W);
  __shared__ float warp_max[kSWarps];
  __shared__ int warp_nan[kSWarps];
  __shared__ float cta_max;  // read by the other CTAs of the cluster
  __shared__ int cta_nan;
  const int c = static_cast<int>(cluster.block_rank());
  const int64_t tok = blockIdx.x / kC;
  const int r0 = c * p.R, nrows = max(0, min(p.m, r0 + p.R) - r0);
  const T* x = static_cast<const T*>(p.x) + tok * p.K;

  const int mt = (p.m + 15) >> 4;
  const uint32_t left_s = smem_addr(left);
  for (int i = threadIdx.x; i < mt * mt * 32; i += kSThreads) cp_async16(left_s + 16 * i, p.left + i);
  cp_async_commit();

  // rows: load (+ FWHT h = 1, 2, 4 in registers), then the stages h >= 8
  const int c8 = p.p >> 3;
  for (int idx = threadIdx.x; idx < nrows * c8; idx += kSThreads) {
    const int r = idx / c8, k = (r0 + r) * p.p + (idx - r * c8) * 8;
    float f[8];
    hadamard_chunk8<T>(__ldg(reinterpret_cast<const uint4*>(x + k)), p.smooth, p.signs, k, f);
    float4* dst = reinterpret_cast<float4*>(rows + r * p.p + (k - (r0 + r) * p.p));
    dst[0] = make_float4(f[0], f[1], f[2], f[3]);
    dst[1] = make_float4(f[4], f[5], f[6], f[7]);
  }
  __syncthreads();
  const int half = p.p >> 1;
  for (int h = 8; h < p.p; h <<= 1) {
    for (int idx = threadIdx.x; idx < nrows * half; idx += kSThreads) {
      const int r = idx / half, e = idx - r * half;
      float* a = rows + r * p.p + (e / h) * 2 * h + e % h;
      const float u = a[0], v = a[h];
      a[0] = u + v;
      a[h] = u - v;
    }
    __syncthreads();
  }
  cluster.sync();  // every CTA's rows are final

  // gather: this CTA's columns of all m rows, 8 consecutive floats per (row, column group)
  const int groups = p.W / kColGroup;
  for (int idx = threadIdx.x; idx < p.m * groups; idx += kSThreads) {
    const int l = idx / groups, g = idx - l * groups;
    const int owner = l / p.R;
    const float* src = cluster.map_shared_rank(rows, owner) + (l - owner * p.R) * p.p + g * 64 + c * kColGroup;
    const float4 a = reinterpret_cast<const float4*>(src)[0], b = reinterpret_cast<const float4*>(src)[1];
    float4* dst = reinterpret_cast<float4*>(G + l * GS + g * kColGroup);
    dst[0] = a;
    dst[1] = b;
  }
  cp_async_wait<0>();
  __syncthreads();

  // mix: Y = H_m^T G / sqrt(K) on the tensor cores (mix_strip_bf16: H_m exact, G split into 3
  // bf16 terms).  A warp task is one 8-column strip and up to kTilesPerTask row tiles, so m = 148
  // (10 tiles, 2 strips at p = 128) keeps all 8 warps busy.  absmax / NaN on the way.
  float amax = 0.f;
  int nan = 0;
  const int lane = threadIdx.x & 31, g = lane >> 2, c2 = 2 * (lane & 3);
  const int tile_groups = (mt + kTilesPerTask - 1) / kTilesPerTask;
  for (int task = threadIdx.x >> 5; task < (p.W >> 3) * tile_groups; task += kSWarps) {
    const int s = task / tile_groups, rt0 = (task - s * tile_groups) * kTilesPerTask;
    float acc[kTilesPerTask][4] = {};
    const float* col = G + s * 8 + g;
    mix_strip_bf16<kTilesPerTask, true>(acc, left, mt, [&](int k) { return k < p.m ? col[k * GS] : 0.f; }, rt0);
#pragma unroll
    for (int j = 0; j < kTilesPerTask; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = (rt0 + j) * 16 + g + 8 * h;
        if (row < p.m) {
          const float y0 = acc[j][2 * h] * p.mix_scale, y1 = acc[j][2 * h + 1] * p.mix_scale;
          nan |= (y0 != y0) | (y1 != y1);
          amax = fmaxf(amax, fmaxf(fabsf(y0), fabsf(y1)));
          *reinterpret_cast<float2*>(Y + row * p.W + s * 8 + c2) = make_float2(y0, y1);
        }
      }
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    nan |= __shfl_xor_sync(0xffffffffu, nan, o);
  }
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) { warp_max[warp] = amax; warp_nan[warp] = nan; }
  __syncthreads();
  if (threadIdx.x == 0) {
    float a = 0.f;
    int n = 0;
    for (int w = 0; w < kSWarps; ++w) { a = fmaxf(a, warp_max[w]); n |= warp_nan[w]; }
    cta_max = a;
    cta_nan = n;
  }
  cluster.sync();  // every CTA's partial absmax is written
  amax = 0.f;
  nan = 0;
  for (int r = 0; r < kC; ++r) {
    amax = fmaxf(amax, *cluster.map_shared_rank(&cta_max, r));
    nan |= *cluster.map_shared_rank(&cta_nan, r);
  }
  auto done_reading = cluster.barrier_arrive();  // waited for at the end: no CTA leaves while read
  constexpr int qmax = BITS == 8 ? 127 : 7;
  amax = clipped_range(amax, p.clip);
  if (c == 0 && threadIdx.x == 0) p.scale[tok] = token_scale(amax, nan, qmax);
  const float inv = inv_scale(amax, nan, qmax);

  // quantize this CTA's columns: int8 8 bytes per (row, column group); int4 pairs the groups
  // of columns j and j + 64 (groups 2 b and 2 b + 1 of 128-block b) into 8 bytes
  if constexpr (BITS == 8) {
    int8_t* out = reinterpret_cast<int8_t*>(p.q) + tok * p.K;
    for (int idx = threadIdx.x; idx < p.m * groups; idx += kSThreads) {
      const int l = idx / groups, g = idx - l * groups;
      float f[8];
      const float4* src = reinterpret_cast<const float4*>(Y + l * p.W + g * kColGroup);
      const float4 a = src[0], b = src[1];
      f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
      *reinterpret_cast<uint2*>(out + l * p.p + g * 64 + c * kColGroup) = quantize8(f, inv, qmax);
    }
  } else {
    uint8_t* out = p.q + tok * (p.K / 2);
    const int blocks = groups / 2;  // 128-blocks per row
    for (int idx = threadIdx.x; idx < p.m * blocks; idx += kSThreads) {
      const int l = idx / blocks, b = idx - l * blocks;
      const float* lo = Y + l * p.W + 2 * b * kColGroup;
      const float* hi = lo + kColGroup;
      uint32_t w[2] = {0u, 0u};
#pragma unroll
      for (int e = 0; e < 8; ++e)
        w[e >> 2] |= static_cast<uint32_t>(pack_nibbles(quantize_one(lo[e], inv, qmax), quantize_one(hi[e], inv, qmax)))
                     << (8 * (e & 3));
      *reinterpret_cast<uint2*>(out + (l * p.p + b * 128) / 2 + c * kColGroup) = make_uint2(w[0], w[1]);
    }
  }
  cluster.barrier_wait(std::move(done_reading));  // the other CTAs have read cta_max / cta_nan
#else
  __trap();  // the host launches this kernel on sm_90+ only
#endif
}

template <typename T, int BITS>
void launch_small(const SParams& p, int64_t M, size_t smem, cudaStream_t s) {
  auto kernel = hadamard_small_kernel<T, BITS>;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
             "cudaFuncSetAttribute(quantize_act_hadamard_small)");
  launch_clustered(kernel, dim3(static_cast<unsigned>(M * kC)), kSThreads, smem, s, kC, p,
                   "quantize_act_hadamard_small launch");
}

}  // namespace

bool hadamard_small_fits(int m, int p2, int device) {
  const DeviceInfo info = device_info(device);
  return info.major >= 9 && m > 1 && m <= 176 && p2 >= 128 && (p2 & (p2 - 1)) == 0 &&
         small_smem_bytes(m, p2) <= static_cast<size_t>(info.smem_optin);
}

void quantize_act_hadamard_small(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t signs,
                                 std::uintptr_t left, std::uintptr_t q, std::uintptr_t scale, int64_t M, int m,
                                 int p2, int bits, int dtype, int device, std::uintptr_t stream, float clip_ratio) {
  if (bits != 4 && bits != 8) throw std::invalid_argument("modaq._C.quantize_act_hadamard_small: bits must be 4 or 8");
  if (!hadamard_small_fits(m, p2, device))
    throw std::invalid_argument("modaq._C.quantize_act_hadamard_small: needs sm_90, 1 < m <= 176, p a power of two "
                                ">= 128 and the shared memory for m x p");
  if (M < 0 || M > (1 << 24) / kC) throw std::invalid_argument("modaq._C.quantize_act_hadamard_small: bad M");
  if (M == 0) return;
  SParams p{};
  p.x = reinterpret_cast<const void*>(x);
  p.smooth = reinterpret_cast<const float*>(smooth);
  p.signs = reinterpret_cast<const float*>(signs);
  p.left = reinterpret_cast<const uint4*>(left);
  p.q = reinterpret_cast<uint8_t*>(q);
  p.scale = reinterpret_cast<float*>(scale);
  p.m = m;
  p.p = p2;
  p.K = m * p2;
  p.R = (m + kC - 1) / kC;
  p.W = p2 / kC;
  p.mix_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.K)));
  p.clip = clip_ratio;
  const size_t smem = small_smem_bytes(m, p2);
  cudaStream_t s = enter(device, stream);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (bits == 8) launch_small<T, 8>(p, M, smem, s);
    else launch_small<T, 4>(p, M, smem, s);
  });
  check_launch("quantize_act_hadamard_small");
}

}  // namespace modaq
