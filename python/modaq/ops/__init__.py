"""modaq ops: one torch.library custom op per kernel family.

Each op validates its arguments, runs the plain-torch reference on CPU tensors and the fastest
available backend (CUDA `_C`, Triton, else the reference) on CUDA tensors; `backends()` says
which.  All ops have fake impls, so they trace under torch.compile and capture in CUDA graphs.
"""
from . import fast_activation  # noqa: F401  (registers fast backends)
from . import fast_int_gemm  # noqa: F401  (registers fast backends)
from . import fast_weight_only  # noqa: F401  (registers fast backends)
from ._registry import backends
from .activation import hadamard_transform, kron_transform, quantize_act
from .int_gemm import int_linear, w4a4_gemm, w4a8_gemm, w8a8_gemm
from .weight_only import w3a16_gemm, w4a16_gemm

__all__ = [
    "backends", "quantize_act", "hadamard_transform", "kron_transform",
    "w3a16_gemm", "w4a16_gemm", "w4a8_gemm", "w4a4_gemm", "w8a8_gemm", "int_linear",
]
