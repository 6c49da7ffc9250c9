"""Op definition and backend dispatch.

Every modaq op is a `torch.library` op in the `modaq` namespace with three parts:
  * the reference (plain torch, fp32 accumulation) registered for CPU, and the fallback on CUDA,
  * fast backends (CUDA `_C`, Triton) registered here by name with an availability check;
    the first available one runs CUDA tensors,
  * a fake (meta) impl, so modules trace under torch.compile and capture in CUDA graphs.
Validation happens before the op is called (in the public wrappers), so kernels see only
well-formed inputs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

_LIB = torch.library.Library("modaq", "DEF")


@dataclass(frozen=True)
class FastPath:
    backend: str  # "cuda" (modaq._C) or "triton"
    available: Callable[[], bool]
    fn: Callable


_FAST: dict[str, list[FastPath]] = {}
_REFERENCE: dict[str, Callable] = {}


def define_op(name: str, schema: str, reference: Callable, fake: Callable) -> Callable:
    """Define modaq::<name>; returns torch.ops.modaq.<name>."""
    _LIB.define(f"{name}{schema}")
    _REFERENCE[name] = reference
    _FAST.setdefault(name, [])
    _LIB.impl(name, reference, "CPU")

    def cuda_impl(*args):
        fast = pick(name)
        return (fast.fn if fast is not None else reference)(*args)

    _LIB.impl(name, cuda_impl, "CUDA")
    torch.library.register_fake(f"modaq::{name}", fake, lib=_LIB)
    return getattr(torch.ops.modaq, name)


def register_fast(name: str, backend: str, available: Callable[[], bool]):
    """Decorator: register `fn` as a fast CUDA-tensor implementation of op `name`.

    Backends registered earlier are preferred.  `available()` is asked once per process.
    """
    def wrap(fn: Callable) -> Callable:
        _FAST.setdefault(name, []).append(FastPath(backend, available, fn))
        pick.cache_clear()
        return fn
    return wrap


@functools.lru_cache(maxsize=None)
def pick(name: str) -> FastPath | None:
    for path in _FAST.get(name, []):
        if path.available():
            return path
    return None


@functools.lru_cache(maxsize=None)
def cuda_device_present() -> bool:
    return torch.cuda.is_available()


def backends() -> dict[str, str]:
    """For each op, which backend runs CUDA tensors on this machine (CPU tensors: reference).

    Values: 'cuda' (modaq._C), 'triton', 'reference (no fast kernel yet)',
    'reference (fast kernels need a CUDA device)'.
    """
    report = {}
    for name in sorted(_REFERENCE):
        if not cuda_device_present():
            report[name] = "reference (fast kernels need a CUDA device)"
            continue
        fast = pick(name)
        report[name] = fast.backend if fast else "reference (no fast kernel yet)"
    return report
