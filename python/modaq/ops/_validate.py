"""Argument checks shared by the op wrappers.  Each raises TypeError / ValueError naming the
argument and what was expected; none reads tensor data (so they trace under torch.compile)."""
from __future__ import annotations

import torch

ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def tensor(name: str, t, dtypes=None, dim: int | None = None, device: torch.device | None = None,
           contiguous: bool = False) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        want = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype {want}, got {str(t.dtype).replace('torch.', '')}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name}: expected a {dim}-D tensor, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of x), got {t.device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (pack it with modaq.formats)")
    return t


def activation(name: str, x) -> torch.Tensor:
    tensor(name, x, ACT_DTYPES)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{name}: expected shape [..., K] with K > 0, got {tuple(x.shape)}")
    return x


def rows(x: torch.Tensor) -> torch.Tensor:
    """[..., K] -> contiguous [M, K] (a view when possible)."""
    return x.reshape(-1, x.shape[-1]).contiguous()


def shape(name: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {tuple(t.shape)}")


def numel(name: str, t: torch.Tensor, expected: int, what: str) -> None:
    if t.numel() != expected:
        raise ValueError(f"{name}: expected {expected} elements ({what}), got {t.numel()} "
                         f"with shape {tuple(t.shape)}")


def vector(name: str, t, length: int, device: torch.device, dtypes=None) -> torch.Tensor:
    tensor(name, t, dtypes, dim=1, device=device)
    shape(name, t, (length,))
    return t


def bias(b, n: int, device: torch.device) -> None:
    if b is not None:
        vector("bias", b, n, device, ACT_DTYPES)


def out_dtype(dtype) -> torch.dtype:
    if dtype not in ACT_DTYPES:
        raise TypeError(f"out_dtype: expected float16, bfloat16 or float32, got {dtype}")
    return dtype


def positive_int(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return v
