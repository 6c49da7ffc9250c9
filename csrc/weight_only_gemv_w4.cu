// 4-bit instantiations of the weight-only fused dequant GEMV (kernel: weight_only_gemv.cuh;
// entry point: weight_only_gemv.cu).  A separate file so the two bit widths compile in parallel.
#include "weight_only_gemv_launch.cuh"

namespace modaq {
namespace woq {

void dispatch_gemv_w4(const GemvArgs& p, int group_size, int dtype, int splits, int kernel, int device,
                      cudaStream_t stream) {
  dispatch_gemv<4>(p, group_size, dtype, splits, kernel, device, stream);
}

}  // namespace woq
}  // namespace modaq
