"""The compiled CUDA extension modaq._C, if it was built, and the glue to call it.

_C has no libtorch dependency: its functions take raw device pointers (int), sizes, a dtype
code, the device index and the current CUDA stream handle, so one build serves every torch.
"""
from __future__ import annotations

import functools
import warnings

import torch

try:
    from .. import _C  # type: ignore[attr-defined]
    IMPORT_ERROR = None
except ImportError as e:  # built without nvcc, or not built yet
    _C = None
    IMPORT_ERROR = str(e)

DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """_C is importable, a CUDA device is present and it is sm_80 or newer."""
    if not torch.cuda.is_available():
        return False
    if _C is None:
        warnings.warn(f"modaq: the CUDA extension modaq._C is not built ({IMPORT_ERROR}); CUDA tensors "
                      "run the Triton / reference backends. Reinstall with nvcc on PATH to build it.")
        return False
    return torch.cuda.get_device_capability() >= (8, 0)


def ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def aligned16(*tensors: torch.Tensor | None) -> bool:
    """Every given tensor (None skipped) starts on a 16-byte boundary (the kernels' vector loads)."""
    return all(t is None or t.data_ptr() % 16 == 0 for t in tensors)


def launch_args(t: torch.Tensor) -> tuple[int, int]:
    """(device index, current stream handle) for a launch on t's device."""
    return t.device.index, torch.cuda.current_stream(t.device).cuda_stream
