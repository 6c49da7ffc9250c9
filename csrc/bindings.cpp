// pybind11 bindings of modaq._C.  Entry points take raw device pointers (Python ints), sizes,
// a dtype code (0 fp16, 1 bf16), the device index and the cudaStream_t of torch's current
// stream; the Python side (modaq/ops/_cuda.py and the fast_* modules) validates everything
// first, so these functions trust their arguments.
//
// Each kernel family declares its entry points in the block below and adds its m.def lines
// to the module body (one family per block, so families can be edited independently).
#include <pybind11/pybind11.h>

#include <cstdint>

namespace modaq {
// --- activation quantization (csrc/quantize_act.cu)
void quantize_act(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t q, std::uintptr_t scale,
                  int64_t M, int64_t K, int bits, int dtype, int device, std::uintptr_t stream,
                  float clip_ratio);
// --- fused online transform + quantization (csrc/quantize_act_hadamard.cu, quantize_act_transform.cu,
//     quantize_act_kron.cu)
bool transform_fits(int n1, int n2);
bool kron_fits(int n1, int n2, int device);
void quantize_act_hadamard(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t signs, std::uintptr_t left,
                           std::uintptr_t left_tf32, std::uintptr_t q, std::uintptr_t scale, int64_t M, int m,
                           int p2, int bits, int dtype, int device, std::uintptr_t stream, float clip_ratio);
void quantize_act_kron(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t left, std::uintptr_t right,
                       std::uintptr_t consts, std::uintptr_t q, std::uintptr_t scale, int64_t M, int n1, int n2,
                       int bits, int dtype, int device, std::uintptr_t stream, float clip_ratio);
// --- Hadamard quantize_act for a few tokens: a thread-block cluster per token (csrc/quantize_act_hadamard_small.cu)
bool hadamard_small_fits(int m, int p2, int device);
void quantize_act_hadamard_small(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t signs,
                                 std::uintptr_t left, std::uintptr_t q, std::uintptr_t scale, int64_t M, int m,
                                 int p2, int bits, int dtype, int device, std::uintptr_t stream, float clip_ratio);
// --- Hadamard quantize_act, mix first (csrc/quantize_act_hadamard_mix.cu)
bool hadamard_mix_fits(int m, int p2, int device);
int hadamard_mix_rows(int m, int p2);
void quantize_act_hadamard_mix(std::uintptr_t x, std::uintptr_t signs, std::uintptr_t left, std::uintptr_t q,
                               std::uintptr_t scale, int64_t M, int m, int p2, int bits, int dtype, int device,
                               std::uintptr_t stream, float clip_ratio);
// --- weight-only W3A16 / W4A16 (csrc/weight_only_gemv.cu, csrc/weight_only_dequant.cu)
void weight_only_gemv(std::uintptr_t x, std::uintptr_t qweight, std::uintptr_t scales, std::uintptr_t zeros,
                      std::uintptr_t bias, int bias_dtype, std::uintptr_t y, int64_t M, int64_t N, int64_t K,
                      int bits, int group_size, int dtype, int splits, int device, std::uintptr_t stream,
                      int kernel);
void weight_only_dequant(std::uintptr_t qweight, std::uintptr_t scales, std::uintptr_t zeros, std::uintptr_t w,
                         int64_t N, int64_t K, int bits, int group_size, int dtype, int device,
                         std::uintptr_t stream);
// --- integer GEMV for decode, W4A8 / W4A4 / W8A8, M <= 16 (csrc/int_gemv.cu)
void int_gemv(std::uintptr_t x, std::uintptr_t x_scale, std::uintptr_t qweight, std::uintptr_t w_scale,
              std::uintptr_t bias, int bias_dtype, std::uintptr_t y, int64_t M, int64_t N, int64_t K,
              int a_bits, int w_bits, int out_dtype, int warps, int device, std::uintptr_t stream);
bool int_gemv_fused_fits(int64_t M, int64_t K);
void int_gemv_fused(std::uintptr_t x, std::uintptr_t smooth, std::uintptr_t qweight, std::uintptr_t w_scale,
                    std::uintptr_t bias, int bias_dtype, std::uintptr_t y, int64_t M, int64_t N, int64_t K,
                    int a_bits, int w_bits, int dtype, int warps, int device, std::uintptr_t stream,
                    float clip_ratio);
}  // namespace modaq

PYBIND11_MODULE(_C, m) {
  m.doc() = "modaq CUDA kernels (raw-pointer interface; use modaq.ops)";
  m.def("quantize_act", &modaq::quantize_act,
        "per-token int8/int4 activation quantization (range clip_ratio * absmax, clip_ratio in (0, 1])",
        pybind11::arg("x"), pybind11::arg("smooth"), pybind11::arg("q"), pybind11::arg("scale"),
        pybind11::arg("M"), pybind11::arg("K"), pybind11::arg("bits"), pybind11::arg("dtype"),
        pybind11::arg("device"), pybind11::arg("stream"), pybind11::arg("clip_ratio") = 1.0f);
  m.def("transform_fits", &modaq::transform_fits,
        "whether the shared-memory Hadamard kernel handles K = m * p (core m, power of two p)",
        pybind11::arg("m"), pybind11::arg("p"));
  m.def("kron_fits", &modaq::kron_fits,
        "whether the fused Kronecker kernel handles X_r [n1, n2] on this device (shared memory)",
        pybind11::arg("n1"), pybind11::arg("n2"), pybind11::arg("device"));
  m.def("quantize_act_hadamard", &modaq::quantize_act_hadamard,
        "randomized Hadamard (K = m * p) fused with per-token quantization; left / left_tf32: H_m^T as "
        "bf16 m16n8k16 / tf32 m16n8k8 A fragments (m > 1)",
        pybind11::arg("x"), pybind11::arg("smooth"), pybind11::arg("signs"), pybind11::arg("left"),
        pybind11::arg("left_tf32"), pybind11::arg("q"), pybind11::arg("scale"), pybind11::arg("M"), pybind11::arg("m"), pybind11::arg("p"),
        pybind11::arg("bits"), pybind11::arg("dtype"), pybind11::arg("device"), pybind11::arg("stream"),
        pybind11::arg("clip_ratio") = 1.0f);
  m.def("quantize_act_kron", &modaq::quantize_act_kron,
        "Kronecker transform P1^T X_r P2 fused with per-token quantization; left / right: the scaled "
        "factors as split-fp16 mma fragments, consts: their power-of-two scales (ops.fast_activation)",
        pybind11::arg("x"), pybind11::arg("smooth"), pybind11::arg("left"), pybind11::arg("right"),
        pybind11::arg("consts"), pybind11::arg("q"), pybind11::arg("scale"), pybind11::arg("M"), pybind11::arg("n1"),
        pybind11::arg("n2"), pybind11::arg("bits"), pybind11::arg("dtype"), pybind11::arg("device"),
        pybind11::arg("stream"), pybind11::arg("clip_ratio") = 1.0f);
  m.def("hadamard_small_fits", &modaq::hadamard_small_fits,
        "whether quantize_act_hadamard_small takes K = m * p on this device (sm_90, 1 < m <= 176, p >= 128)",
        pybind11::arg("m"), pybind11::arg("p"), pybind11::arg("device"));
  m.def("quantize_act_hadamard_small", &modaq::quantize_act_hadamard_small,
        "randomized Hadamard + per-token quantization, one 8-CTA cluster per token (decode sizes); left: "
        "H_m^T as bf16 m16n8k16 A fragments",
        pybind11::arg("x"), pybind11::arg("smooth"), pybind11::arg("signs"), pybind11::arg("left"),
        pybind11::arg("q"), pybind11::arg("scale"), pybind11::arg("M"), pybind11::arg("m"), pybind11::arg("p"),
        pybind11::arg("bits"), pybind11::arg("dtype"), pybind11::arg("device"), pybind11::arg("stream"),
        pybind11::arg("clip_ratio") = 1.0f);
  m.def("hadamard_mix_fits", &modaq::hadamard_mix_fits,
        "whether quantize_act_hadamard_mix takes K = m * p on this device (p >= 32, K % 128 == 0, "
        "K / min(p, 128) <= 176)",
        pybind11::arg("m"), pybind11::arg("p"), pybind11::arg("device"));
  m.def("hadamard_mix_rows", &modaq::hadamard_mix_rows,
        "rows m' = K / min(p, 128) of the mix-first kernel's H_m' (0 when it does not take K = m * p)",
        pybind11::arg("m"), pybind11::arg("p"));
  m.def("quantize_act_hadamard_mix", &modaq::quantize_act_hadamard_mix,
        "randomized Hadamard + per-token quantization, H_m' mix on the exact 16-bit input first (no smoothing, "
        "signs +-1); left: H_m'^T as m16n8k16 A fragments in x's dtype",
        pybind11::arg("x"), pybind11::arg("signs"), pybind11::arg("left"), pybind11::arg("q"),
        pybind11::arg("scale"), pybind11::arg("M"), pybind11::arg("m"), pybind11::arg("p"),
        pybind11::arg("bits"), pybind11::arg("dtype"), pybind11::arg("device"), pybind11::arg("stream"),
        pybind11::arg("clip_ratio") = 1.0f);
  m.def("int_gemv", &modaq::int_gemv,
        "W4A8 / W4A4 / W8A8 GEMV (M <= 16, K % 16 == 0); warps: per CTA, 0 = auto",
        pybind11::arg("x"), pybind11::arg("x_scale"), pybind11::arg("qweight"), pybind11::arg("w_scale"),
        pybind11::arg("bias"), pybind11::arg("bias_dtype"), pybind11::arg("y"), pybind11::arg("M"),
        pybind11::arg("N"), pybind11::arg("K"), pybind11::arg("a_bits"), pybind11::arg("w_bits"),
        pybind11::arg("out_dtype"), pybind11::arg("warps"), pybind11::arg("device"), pybind11::arg("stream"));
  m.def("int_gemv_fused_fits", &modaq::int_gemv_fused_fits,
        "whether int_gemv_fused takes x [M, K] (M <= 16, K % 16 == 0, M * K <= 32768)",
        pybind11::arg("M"), pybind11::arg("K"));
  m.def("int_gemv_fused", &modaq::int_gemv_fused,
        "quantize_act (plain, optional smoothing / clip) fused into the W4A8 / W4A4 / W8A8 GEMV: "
        "x fp16 / bf16 [M, K] -> y [M, N] in x's dtype",
        pybind11::arg("x"), pybind11::arg("smooth"), pybind11::arg("qweight"), pybind11::arg("w_scale"),
        pybind11::arg("bias"), pybind11::arg("bias_dtype"), pybind11::arg("y"), pybind11::arg("M"),
        pybind11::arg("N"), pybind11::arg("K"), pybind11::arg("a_bits"), pybind11::arg("w_bits"),
        pybind11::arg("dtype"), pybind11::arg("warps"), pybind11::arg("device"), pybind11::arg("stream"),
        pybind11::arg("clip_ratio") = 1.0f);
  m.def("weight_only_gemv", &modaq::weight_only_gemv,
        "fused dequant GEMV, W3A16 / W4A16, M <= 16 (splits: K split over a cluster, 0 = auto; "
        "kernel: 0 = auto, 1 = shared-memory pipelined, 2 = register pipelined)",
        pybind11::arg("x"), pybind11::arg("qweight"), pybind11::arg("scales"), pybind11::arg("zeros"),
        pybind11::arg("bias"), pybind11::arg("bias_dtype"), pybind11::arg("y"), pybind11::arg("M"),
        pybind11::arg("N"), pybind11::arg("K"), pybind11::arg("bits"), pybind11::arg("group_size"),
        pybind11::arg("dtype"), pybind11::arg("splits"), pybind11::arg("device"), pybind11::arg("stream"),
        pybind11::arg("kernel") = 0);
  m.def("weight_only_dequant", &modaq::weight_only_dequant,
        "W3 / W4 packed weights -> fp16 / bf16 [N, K]",
        pybind11::arg("qweight"), pybind11::arg("scales"), pybind11::arg("zeros"), pybind11::arg("w"),
        pybind11::arg("N"), pybind11::arg("K"), pybind11::arg("bits"), pybind11::arg("group_size"),
        pybind11::arg("dtype"), pybind11::arg("device"), pybind11::arg("stream"));
}
