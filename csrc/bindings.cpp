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
                  int64_t M, int64_t K, int bits, int dtype, int device, std::uintptr_t stream);
}  // namespace modaq

PYBIND11_MODULE(_C, m) {
  m.doc() = "modaq CUDA kernels (raw-pointer interface; use modaq.ops)";
  m.def("quantize_act", &modaq::quantize_act, "per-token int8/int4 activation quantization",
        pybind11::arg("x"), pybind11::arg("smooth"), pybind11::arg("q"), pybind11::arg("scale"),
        pybind11::arg("M"), pybind11::arg("K"), pybind11::arg("bits"), pybind11::arg("dtype"),
        pybind11::arg("device"), pybind11::arg("stream"));
}
