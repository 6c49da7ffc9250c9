"""Third-party quantized-linear baselines for bench_int_gemm: gemlite and torchao.

Neither package is a modaq dependency.  The device machine has no network: fetch their
packages on a machine that has one (`bash scripts/fetch_baseline_wheels.sh` writes .wheels/,
which git ignores), carry .wheels to the device (the run tool's carry argument) and install them
there with `python3 -m pip install --no-deps --no-build-isolation .wheels/*` (gemlite is pure
Python and Triton: its unpacked source on PYTHONPATH also works); then
`python benchmarks/bench_int_gemm.py --baselines gemlite,torchao --layers-only`.  torchao's
layer cannot be captured in a CUDA graph (torch 2.11); bench_int_gemm times it eagerly (EAGER).

Each baseline is built from the same quantized weights as modaq's columns where its format can
hold them exactly, so the columns compare kernels, not quantizers:
  gemlite_w4a8_layer  gemlite A8W4_HQQ_INT_dynamic: modaq's symmetric int4 codes q in [-7, 7]
                      with per-channel scales s as HQQ's (u - z) * s, u = q + 8, z = 8; gemlite
                      quantizes the activations per token itself (fp8 e4m3 by default on sm_90)
  gemlite_w8a8_layer  gemlite A8W8_int8_dynamic from the dequantized int8 weights (it re-derives
                      the per-channel int8 codes, the same ones)
  torchao_w8a8_layer  torchao Int8DynamicActivationInt8WeightConfig on the dequantized int8
                      weights (per-token int8 activations, torch._int_mm)
torchao 0.18 has no CUDA W4A8 kernel without fbgemm-gpu-genai, and its CUDA int4 weight-only
path is torch._weight_int4pack_mm, which bench_weight_only already measures.
"""
from __future__ import annotations

from typing import Callable

import torch

NAMES = ("gemlite", "torchao")
# layers a CUDA graph cannot capture, timed as eager calls: torchao 0.18's int8 dynamic layer
# fails capture ("operation failed due to a previous error during capture") and leaves the
# CUDA RNG unusable afterwards, so it is not even tried
EAGER = ("torchao_",)


def version(name: str) -> str:
    """The installed version of baseline `name`, or why it cannot be imported."""
    try:
        module = __import__(name)
    except Exception as e:  # noqa: BLE001  (missing, or built for another torch)
        return f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return str(getattr(module, "__version__", "unknown version"))


def hqq_int4(q4: torch.Tensor, s4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """modaq's symmetric int4 weights (codes q [N, K] in [-7, 7], fp32 scales s [N]) in HQQ's
    asymmetric form W = (u - z) * s: u = q + 8 uint8 in [1, 15], z = 8, scales [N, 1]."""
    if q4.dtype != torch.int8 or q4.dim() != 2:
        raise ValueError(f"q4: expected int8 [N, K] codes, got {q4.dtype} {tuple(q4.shape)}")
    if int(q4.abs().max()) > 7:
        raise ValueError("q4: symmetric int4 codes must lie in [-7, 7]")
    n = q4.shape[0]
    if s4.shape != (n,):
        raise ValueError(f"s4: expected shape ({n},), got {tuple(s4.shape)}")
    return (q4.to(torch.int16) + 8).to(torch.uint8), s4.reshape(n, 1), torch.full((n, 1), 8.0, device=q4.device)


def _dequantized_linear(q: torch.Tensor, s: torch.Tensor, dtype: torch.dtype) -> torch.nn.Linear:
    n, k = q.shape
    lin = torch.nn.Linear(k, n, bias=False, device=q.device, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_((q.float() * s.float()[:, None]).to(dtype))
    return lin


def layers(names, q4, s4, q8, s8, dtype=torch.float16) -> dict[str, Callable | str]:
    """name -> a module taking x [M, K] (dtype) to [M, N], or the error that kept it from being
    built; q4 / q8: int8 codes [N, K] on the GPU, s4 / s8: fp32 per-channel scales [N]."""
    out: dict[str, Callable | str] = {}
    device = str(q4.device)
    if "gemlite" in names:
        _gemlite_sm90_configs()

        def w4a8():
            from gemlite.helper import A8W4_HQQ_INT_dynamic
            u, scales, zeros = hqq_int4(q4, s4)
            return A8W4_HQQ_INT_dynamic(device=device, dtype=dtype).from_weights(u, scales.to(dtype), zeros)

        def w8a8():
            from gemlite.helper import A8W8_int8_dynamic
            return A8W8_int8_dynamic(device=device, dtype=dtype).from_linear(_dequantized_linear(q8, s8, dtype))

        out["gemlite_w4a8_layer"] = _build(w4a8)
        out["gemlite_w8a8_layer"] = _build(w8a8)
    if "torchao" in names:
        def ao_w8a8():
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
            lin = _dequantized_linear(q8, s8, dtype)
            quantize_(lin, Int8DynamicActivationInt8WeightConfig())
            return lin

        out["torchao_w8a8_layer"] = _build(ao_w8a8)
    return out


def _gemlite_sm90_configs() -> None:
    """gemlite ships tuned Triton configs per GPU name (gemlite/configs/*.json), the H100's but not
    the H200's, where it falls back to a short autotune at the first call; the H200 is the H100's
    chip (GH100, 132 SMs) with faster memory, so give it the H100's."""
    import os
    try:
        import gemlite
    except Exception:  # noqa: BLE001  (layers() records the import error)
        return
    if not torch.cuda.is_available() or "h200" not in torch.cuda.get_device_name().lower():
        return
    path = os.path.join(os.path.dirname(gemlite.__file__), "configs", "h100.json")
    if os.path.exists(path):
        gemlite.load_config(path)


def _build(make) -> Callable | str:
    try:
        return make()
    except Exception as e:  # noqa: BLE001  (recorded in the results instead of a column)
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
