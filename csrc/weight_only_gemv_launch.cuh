// Host side of the weight-only fused GEMVs: the cluster K split of the shared-memory pipelined
// kernel (weight_only_gemv.cuh), its launch, and the dispatch between it and the register-
// pipelined kernel (weight_only_gemv_regs.cuh) over M, N, dtype, group size and token tiles.
#pragma once

#include <algorithm>
#include <stdexcept>

#include "weight_only_gemv.cuh"
#include "weight_only_gemv_regs.cuh"

namespace modaq {
namespace woq {

constexpr int kStages = 5;  // ring slots per warp: 4 blocks (6 / 8 KB for W3 / W4) in flight
// ... and 2 blocks when M <= 8 and the grid has more CTAs than the GPU has SMs (and at M > 8,
// two_tile_plan).  H200, M = 1, forced depths in one run (3 / 5 / 8 slots): 3584 x 18944 (296
// CTAs, 2.2 per SM) W4 14.2 / 16.2 / 18.2 us, W3 14.3 / 15.3 / 17.7, at M = 4 W4 18.0 / 21.1;
// but 18944 x 3584 (112 CTAs, cluster split 2) W4 18.0 / 15.7 / 16.0 and 14336 x 4096 (128)
// 15.1 / 13.3 / 13.3.  The threshold, from the shallow ring forced against the automatic choice
// (H200, 2026-12-01, M = 1): 4096 x 14336 (224 CTAs) W3 12.1 vs 12.9 us, W4 13.0 vs 14.0;
// 3584 x 4608 (144) 6.5 vs 6.8; 3584 x 3584 and 4096 x 4096 (112, 128) equal; 14336 x 4096
// (128) 13.4 vs 12.8 and 18944 x 3584 (112) 16.3 vs 15.4.
constexpr int kShallowStages = 3;
// the entry point's `kernel`; kShallowKernel = the shared-memory kernel with kShallowStages forced
constexpr int kAutoKernel = 0, kSmemKernel = 1, kRegsKernel = 2, kShallowKernel = 3;

// K split (cluster size): the one closest to one CTA per SM.  Fitted to a sweep on an H100
// (W3, M = 1; benchmarks/results/weight_only_*.md): the fewest splits that fill the SMs won,
// e.g. 3584 x 18944 (296 CTAs unsplit): 1 -> 18.7 us, 8 -> 24.9 us; 14336 x 4096 (64 CTAs):
// 2 -> 14.0 us, 4 -> 16.7 us.  Extra splits cost more (per-CTA x staging and pipeline fill,
// cluster barrier, DSMEM reduction) than the SM imbalance they remove.
inline int choose_splits(int row_blocks, int sms, int max_splits) {
  const int s = (sms + row_blocks / 2) / row_blocks;  // round(sms / row_blocks)
  return std::max(1, std::min(s, max_splits));
}

// Grid of the shared-memory kernel for p: K split, shared memory, and how many of its CTAs
// an SM holds (fits = false: x of p.M rows does not fit at any split).
struct SmemPlan {
  int row_blocks = 0, splits = 0, kt_per_split = 0, ctas_per_sm = 0;
  size_t smem = 0;
  bool fits = false;
};

template <typename T, int BITS, int GROUP, int MT, int STAGES>
SmemPlan plan_gemv(const GemvArgs& p, int splits, int device) {
  using C = GemvConfig<T, BITS, GROUP, MT, STAGES>;
  auto kernel = weight_only_gemv_kernel<T, BITS, GROUP, MT, STAGES>;
  const DeviceInfo info = device_info(device);
  static bool opted_in[64] = {};
  if (!opted_in[device]) {  // allow the large dynamic shared memory once per device
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, info.smem_optin),
               "weight_only_gemv smem attribute");
    opted_in[device] = true;
  }
  const int k_tiles = (p.K + kTileK - 1) / kTileK;
  SmemPlan plan;
  plan.row_blocks = C::row_blocks(p.N);
  const int max_splits = info.major >= 9 ? std::min(kMaxSplits, k_tiles) : 1;  // clusters need sm_90
  auto fits = [&](int kt) { return C::smem_bytes(p.M, kt) <= (size_t)info.smem_optin; };
  auto kt_of = [&](int s) { return (k_tiles + s - 1) / s; };
  if (splits <= 0) splits = choose_splits(plan.row_blocks, info.sms, max_splits);
  splits = std::max(1, std::min(splits, max_splits));
  while (!fits(kt_of(splits)) && splits < max_splits) ++splits;  // a split too small for x
  if (!(plan.fits = fits(kt_of(splits)))) return plan;
  plan.kt_per_split = kt_of(splits);
  plan.splits = (k_tiles + plan.kt_per_split - 1) / plan.kt_per_split;  // no empty rank
  plan.smem = C::smem_bytes(p.M, plan.kt_per_split);
  plan.ctas_per_sm = resident_ctas(kernel, C::kWarps, plan.smem);
  return plan;
}

template <typename T, int BITS, int GROUP, int MT, int STAGES>
void launch_gemv(GemvArgs p, const SmemPlan& plan, cudaStream_t stream) {
  using C = GemvConfig<T, BITS, GROUP, MT, STAGES>;
  p.n_tiles = (p.N + kTileN - 1) / kTileN;
  p.k_tiles = (p.K + kTileK - 1) / kTileK;
  p.kt_per_split = plan.kt_per_split;
  p.splits = plan.splits;
  launch_split_k(weight_only_gemv_kernel<T, BITS, GROUP, MT, STAGES>, dim3(plan.row_blocks * plan.splits),
                 C::kThreads, plan.smem, stream, plan.splits, p);
  check_launch("weight_only_gemv");
}

// Which kernel for kernel = kAutoKernel.  Fitted to the forced-kernel times of both kernels on
// an H100 (benchmarks/results/weight_only_*.md, M = 1..16, 7 shapes, W3 / W4 / W4 bf16: within
// 0.2% of the per-case best in total, worst case +5%; "M > 4 and N > 4096 -> registers" was
// +46% worst): the shared-memory kernel when all its CTAs are resident at once (a second,
// partial wave of CTAs that each stream a long K range leaves most SMs idle), and for M > 8
// (8-warp CTAs) only unsplit or at >= 2 CTAs per SM (one CTA per SM does not hide the cluster
// barrier and reduction).  Otherwise, and when x does not fit, the register-pipelined kernel.
inline bool smem_kernel_wins(const SmemPlan& plan, int mt, int sms) {
  if (!plan.fits || (long)plan.row_blocks * plan.splits > (long)plan.ctas_per_sm * sms) return false;
  return mt == 1 || plan.splits == 1 || plan.ctas_per_sm >= 2;
}

// M = 9..16 (two token tiles, 8-warp CTAs): x of up to 16 rows leaves room for about one CTA
// per SM, so the grid must fit in one wave with a margin: the shallow ring, with the K split
// over the most cluster CTAs that keep the grid within 90% of the SMs (fits = false: none
// does).  H200, forced splits of the shallow ring at M = 12 / 16 in one run (the best split is
// the one this picks on all 7 shapes): 18944 x 3584 M = 16 W4 20.0 us at 4 splits (112 CTAs)
// against 30.1 at 5 (140 CTAs) and 29.9 for the automatic choice before (register kernel);
// 14336 x 4096 19.4 at 3 (96 CTAs), 28.9 at 4 (128 CTAs, 97% of the SMs: as slow as two
// waves), 25.6 before; 3584 x 3584 8.3 at 4 (112 CTAs), 10.1 before.  3584 x 18944 (148 row
// blocks: more than 90% of the SMs unsplit) keeps the older rule (register kernel, 25.1 us).
template <typename T, int BITS, int GROUP>
SmemPlan two_tile_plan(const GemvArgs& p, int sms, int device) {
  using C = GemvConfig<T, BITS, GROUP, 2, kShallowStages>;
  const long max_ctas = sms * 9L / 10;
  const long row_blocks = C::row_blocks(p.N);
  SmemPlan plan;  // fits = false
  if (row_blocks > max_ctas) return plan;
  plan = plan_gemv<T, BITS, GROUP, 2, kShallowStages>(p, (int)std::min<long>(max_ctas / row_blocks, kMaxSplits), device);
  // plan_gemv raises the split when x does not fit: the grid may have outgrown the margin
  if (plan.ctas_per_sm < 1 || (long)plan.row_blocks * plan.splits > max_ctas) plan.fits = false;
  return plan;
}

// The shared-memory kernel with the ring depth it runs at (kShallowStages at M <= 8 when the
// grid has more CTAs than SMs and, automatic choice, at M > 8 by two_tile_plan; else kStages),
// if kernel = kSmemKernel / kShallowKernel or the rules above pick it; the shallow plan is the
// one judged (at M = 4 on 3584 x 18944 the 5-slot plan's x staging left too few CTAs per SM,
// so the register kernel ran: 20.2 us, against 16.5 for the shallow ring).
template <typename T, int BITS, int GROUP, int MT>
bool try_smem_kernel(const GemvArgs& p, int splits, int kernel, int device, cudaStream_t stream) {
  if (kernel == kShallowKernel) {
    const SmemPlan shallow = plan_gemv<T, BITS, GROUP, MT, kShallowStages>(p, splits, device);
    if (!shallow.fits) return false;
    launch_gemv<T, BITS, GROUP, MT, kShallowStages>(p, shallow, stream);
    return true;
  }
  const int sms = device_info(device).sms;
  if constexpr (MT == 2) {
    if (kernel == kAutoKernel && splits <= 0) {
      const SmemPlan shallow = two_tile_plan<T, BITS, GROUP>(p, sms, device);
      if (shallow.fits) {
        launch_gemv<T, BITS, GROUP, MT, kShallowStages>(p, shallow, stream);
        return true;
      }
    }
  }
  const SmemPlan plan = plan_gemv<T, BITS, GROUP, MT, kStages>(p, splits, device);
  if constexpr (MT == 1) {
    if (plan.fits && (long)plan.row_blocks * plan.splits > sms) {  // same split, shallower ring
      const SmemPlan shallow = plan_gemv<T, BITS, GROUP, MT, kShallowStages>(p, plan.splits, device);
      if (!(kernel == kSmemKernel ? shallow.fits : smem_kernel_wins(shallow, MT, sms))) return false;
      launch_gemv<T, BITS, GROUP, MT, kShallowStages>(p, shallow, stream);
      return true;
    }
  }
  // forced kernel 1 falls back too when x does not fit (the register kernel stages x in chunks)
  if (!(kernel == kSmemKernel ? plan.fits : smem_kernel_wins(plan, MT, sms))) return false;
  launch_gemv<T, BITS, GROUP, MT, kStages>(p, plan, stream);
  return true;
}

template <typename T, int BITS, int GROUP, int MT>
void launch_by_kernel(const GemvArgs& p, int splits, int kernel, int device, cudaStream_t stream) {
  if (kernel != kRegsKernel && try_smem_kernel<T, BITS, GROUP, MT>(p, splits, kernel, device, stream)) return;
  GemvArgs r = {};  // same struct; the register kernel plans its own tiles / splits
  r.x = p.x; r.qweight = p.qweight; r.scales = p.scales; r.zeros = p.zeros; r.bias = p.bias; r.y = p.y;
  r.M = p.M; r.N = p.N; r.K = p.K; r.bias_dtype = p.bias_dtype;
  regs::dispatch_gemv<T, BITS>(r, GROUP, splits, device, stream);
}

template <typename T, int BITS>
void launch_rows(const GemvArgs& p, int group_size, int splits, int kernel, int device, cudaStream_t stream) {
  if (p.M <= 8) {
    group_size == 128 ? launch_by_kernel<T, BITS, 128, 1>(p, splits, kernel, device, stream)
                      : launch_by_kernel<T, BITS, 64, 1>(p, splits, kernel, device, stream);
  } else {
    group_size == 128 ? launch_by_kernel<T, BITS, 128, 2>(p, splits, kernel, device, stream)
                      : launch_by_kernel<T, BITS, 64, 2>(p, splits, kernel, device, stream);
  }
}

// Dispatch over dtype for one bit width (one per .cu file, so the instantiations compile in
// parallel).
template <int BITS>
void dispatch_gemv(const GemvArgs& p, int group_size, int dtype, int splits, int kernel, int device,
                   cudaStream_t stream) {
  dispatch_float(dtype, [&](auto tag) {
    launch_rows<decltype(tag), BITS>(p, group_size, splits, kernel, device, stream);
  });
}

void dispatch_gemv_w3(const GemvArgs& p, int group_size, int dtype, int splits, int kernel, int device,
                      cudaStream_t stream);
void dispatch_gemv_w4(const GemvArgs& p, int group_size, int dtype, int splits, int kernel, int device,
                      cudaStream_t stream);

}  // namespace woq
}  // namespace modaq
