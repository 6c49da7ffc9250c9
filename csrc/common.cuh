// Shared helpers for modaq's CUDA kernels: error checks, dtype dispatch, element conversion.
// The extension has no libtorch dependency: every entry point receives raw device pointers,
// sizes, a dtype code (0 = fp16, 1 = bf16, 2 = fp32), the device index and a cudaStream_t.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace modaq {

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("modaq._C: ") + what + ": " + cudaGetErrorString(err));
  }
}

// Select the device the pointers live on (our cudart is separate from torch's, so its
// current device is not torch's) and return the caller's stream.
inline cudaStream_t enter(int device, std::uintptr_t stream) {
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  return reinterpret_cast<cudaStream_t>(stream);
}

inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

// Launch kernel(args) on `grid` in thread-block clusters of cluster_x CTAs along x (the CTAs of a
// cluster share distributed shared memory); cluster_x <= 1 is a plain launch.
template <typename Kernel, typename Args>
void launch_clustered(Kernel kernel, dim3 grid, int threads, size_t smem, cudaStream_t stream, int cluster_x,
                      const Args& args, const char* what) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster_x;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = cluster_x > 1 ? 1 : 0;
  check_cuda(cudaLaunchKernelEx(&cfg, kernel, args), what);
}

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }

enum DType : int { kHalf = 0, kBFloat16 = 1, kFloat = 2 };

// Device attributes the launchers size their grids by, queried once per device.
struct DeviceInfo {
  int sms = 0;
  int major = 0;
  int smem_optin = 0;  // max dynamic shared memory per CTA
};

inline DeviceInfo device_info(int device) {
  static DeviceInfo cache[64];
  if (device < 0 || device >= 64) throw std::invalid_argument("modaq._C: device index out of range");
  DeviceInfo& info = cache[device];
  if (info.sms == 0) {  // benign race: every thread writes the same values
    check_cuda(cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, device), "device attribute");
    check_cuda(cudaDeviceGetAttribute(&info.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
               "device attribute");
    check_cuda(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, device), "device attribute");
  }
  return info;
}

// CTAs of `warps` warps an SM holds at `smem` dynamic bytes: the occupancy query once per
// kernel, warp count and KB of shared memory (rounded up), so the decode hot path makes no
// CUDA API call (one GPU type per process).  The GEMV launchers size their grids by it.
template <typename Kernel>
int resident_ctas(Kernel kernel, int warps, size_t smem) {
  static int cache[17][257] = {};  // [warps][KB]: <= 16 warps, 256 KB >= any GPU's opt-in
  const size_t kb = (smem + 1023) / 1024;
  if (warps < 1 || warps > 16 || kb > 256) return 0;
  int& r = cache[warps][kb];
  if (r == 0) {
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&r, kernel, warps * 32, kb * 1024), "occupancy");
    if (r == 0) r = -1;  // does not fit: remembered too
  }
  return r > 0 ? r : 0;
}

// A persistent kernel's launch: allow `smem` bytes of dynamic shared memory, then launch
// min(work, the CTAs all SMs hold at once) CTAs of `threads`, each looping over work items.
template <typename Kernel, typename Args>
void launch_persistent(Kernel kernel, int64_t work, int threads, size_t smem, int device, cudaStream_t stream,
                       const Args& args, const char* what) {
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)), what);
  int per_sm = 0;
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem), what);
  const int64_t cap = static_cast<int64_t>(device_info(device).sms) * (per_sm > 0 ? per_sm : 1);
  kernel<<<static_cast<unsigned>(work < cap ? work : cap), threads, smem, stream>>>(args);
}

// bias[n] of a bias in fp16, bf16 or fp32 (dtype code) as fp32.
__device__ __forceinline__ float load_bias(const void* bias, int dtype, int n) {
  if (dtype == kHalf) return __half2float(static_cast<const __half*>(bias)[n]);
  if (dtype == kBFloat16) return __bfloat162float(static_cast<const __nv_bfloat16*>(bias)[n]);
  return static_cast<const float*>(bias)[n];
}

// Streaming 16-byte load: read once, keep out of L1, fetch whole 256-byte L2 lines.
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 r;
  // volatile: keeps the prefetch where it is written, instead of sunk next to its use
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

// D += A (16x16, row) * B (16x8, col) with T = __half or __nv_bfloat16 operands, fp32 accumulate.
// Fragments (g = lane / 4, c = lane % 4): a = {A[g][2c..], A[g+8][2c..], A[g][2c+8..],
// A[g+8][2c+8..]}, b = {B[2c..][g], B[2c+8..][g]}, d = {C[g][2c], C[g][2c+1], C[g+8][2c],
// C[g+8][2c+1]}; each 32-bit register holds two values, the lower index in the low half.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t* a, const uint32_t* b) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "fp16 or bf16");
  if constexpr (std::is_same<T, __half>::value) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

// The shared-space address of a generic pointer into shared memory (ldmatrix, cp.async).
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ldmatrix .x4 (four 8x8 b16 matrices; lane l gives the address of row l % 8 of matrix l / 8),
// plain or transposed, at a shared-space address or a generic pointer into shared memory.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) { ldmatrix_x4(r, smem_addr(p)); }
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}

__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// cp.async: 16-byte global -> shared copies (dst a shared-space address)
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
// src_bytes = 0 writes 16 zero bytes (x beyond K)
__device__ __forceinline__ void cp_async16_zfill(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
template <int BYTES>
__device__ __forceinline__ void cp_async_small(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;" ::"r"(dst), "l"(src), "n"(BYTES) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}

// Calls f(T{}) with T the element type named by `dtype`.
template <typename F>
void dispatch_float(int dtype, F&& f) {
  switch (dtype) {
    case kHalf: f(__half{}); break;
    case kBFloat16: f(__nv_bfloat16{}); break;
    default: throw std::invalid_argument("modaq._C: dtype code must be 0 (fp16) or 1 (bf16)");
  }
}

}  // namespace modaq
