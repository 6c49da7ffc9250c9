"""CUDA (_C) backend of modaq::quantize_act: plain, randomized-Hadamard and Kronecker variants.

All three are one pass over X (csrc/quantize_act.cu; csrc/quantize_act_hadamard.cu,
quantize_act_hadamard_mix.cu and quantize_act_hadamard_small.cu, with
csrc/quantize_act_transform.cu for the sizes they do not take; csrc/quantize_act_kron.cu).
The tensor-core transform kernels take their constant matrices pre-split in mma fragment
order (ops.mma_fragments): H_m once per (m, device) (bf16, and tf32 for the small cores; H_m'
in x's dtype for the mix-first kernel), (P1, P2) as scaled split-fp16 terms once per pair of
tensors and tensor version (recomputed with torch ops, on the current stream, when a factor is
modified in place).
Hadamard tokens go to one of three kernels (hadamard_kernel): unsmoothed tokens with +-1 signs
to the mix-first kernel (the H_m' mix on the exact 16-bit input: one tensor-core term instead
of three), except a few tokens of a power-of-two K; a few smoothed tokens of a long K to the
thread-block cluster kernel; the rest to the persistent kernel.  Factors beyond the fused
kernels' limits (Hadamard core > 176 or a token over 200 KB of fp32; a Kronecker token whose
padded fp16 planes exceed the device's shared memory, e.g. beyond about 160 x 160 on an H100)
run the reference.  Every variant takes the activation clip ratio (a C++ float: rounded to
fp32 as the reference rounds it) and multiplies each token's absmax by it before quantizing.
"""
from __future__ import annotations

import functools
import weakref

import torch

from ..hadamard import hadamard_factors, hadamard_matrix
from . import _cuda
from .mma_fragments import a_fragments, a_fragments_tf32, kron_operands
from ._registry import register_fast

@functools.lru_cache(maxsize=None)
def _hadamard_left(m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """H_m^T (exact +-1) as bf16 m16n8k16 A fragments (one term) and as tf32 m16n8k8 ones."""
    core_t = hadamard_matrix(m, dtype=torch.float32).t()
    return a_fragments(core_t, 1).to(device), a_fragments_tf32(core_t).to(device)


class VersionCache:
    """Values derived from tensors, kept while each tensor is alive and not modified in place
    (its _version): the first tensor's id is the key; entries whose tensors are freed are
    dropped once the cache holds more than `limit`."""

    def __init__(self, limit: int = 256):
        self._entries: dict[int, tuple] = {}  # id(tensors[0]) -> ((weakref, version) per tensor, value)
        self._limit = limit

    def lookup(self, tensors: tuple[torch.Tensor, ...]):
        """(True, value) when cached for exactly these tensors at their versions, else (False, None)."""
        hit = self._entries.get(id(tensors[0]))
        if hit is not None and len(hit[0]) == len(tensors) and all(
                ref() is t and version == t._version for (ref, version), t in zip(hit[0], tensors)):
            return True, hit[1]
        return False, None

    def store(self, tensors: tuple[torch.Tensor, ...], value):
        if len(self._entries) > self._limit:
            for key in [k for k, (refs, _) in self._entries.items() if any(ref() is None for ref, _ in refs)]:
                del self._entries[key]
        self._entries[id(tensors[0])] = (tuple((weakref.ref(t), t._version) for t in tensors), value)
        return value


_KRON_CACHE = VersionCache()


def _kron_fragments(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mma_fragments.kron_operands(P1, P2), cached while neither tensor changes."""
    found, frags = _KRON_CACHE.lookup((left, right))
    return frags if found else _KRON_CACHE.store((left, right), kron_operands(left, right))


@functools.lru_cache(maxsize=None)
def _hadamard_fits(m: int, p: int) -> bool:
    return bool(_cuda._C.transform_fits(m, p))


# Routing, fitted on an H200 (int_gemm_NVIDIA_H200_mix.md, int_gemm_NVIDIA_H200_hadamard_decode.md):
# the mix-first kernel wherever it applies (K = 18944 M = 4096: 210 us vs 566 persistent; M = 1:
# 9.0 us vs 12.5 cluster, 29 persistent), except a few tokens of a power-of-two K (K = 4096, M = 1:
# persistent 3.2 us vs 4.7); then the cluster kernel (quantize_act_hadamard_small.cu: 8 CTAs per
# token) for at most SMALL_M_MAX tokens of K >= SMALL_MIN_K (smoothed tokens: 18944 M = 1 13 us
# vs 30); the persistent kernel (a CTA per token) for the rest.
SMALL_M_MAX = 16
SMALL_MIN_K = 8192


@functools.lru_cache(maxsize=None)
def _hadamard_small_fits(m: int, p: int, device: int) -> bool:
    return bool(_cuda._C.hadamard_small_fits(m, p, device))


@functools.lru_cache(maxsize=None)
def _hadamard_mix_fits(m: int, p: int, device: int) -> bool:
    return bool(_cuda._C.hadamard_mix_fits(m, p, device))


@functools.lru_cache(maxsize=None)
def _hadamard_mix_left(m: int, p: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """H_m'^T (m' = K / min(p, 128); H_m' = hadamard_matrix(m') = H_m (x) S_(p / p')) as m16n8k16
    A fragments in x's dtype (+-1: exact in one term)."""
    rows = _cuda._C.hadamard_mix_rows(m, p)
    return a_fragments(hadamard_matrix(rows, dtype=torch.float32).t(), 1, dtype).to(device)


_UNIT_SIGNS = VersionCache()


def _unit_signs(signs: torch.Tensor) -> bool:
    """Whether every sign is +-1 (the mix-first kernel flips sign bits, it does not multiply);
    checked once per tensor version, never inside a CUDA graph capture (False there until seen)."""
    found, ok = _UNIT_SIGNS.lookup((signs,))
    if found:
        return ok
    if torch.cuda.is_current_stream_capturing():
        return False
    return _UNIT_SIGNS.store((signs,), bool((signs.abs() == 1).all()))


# Which Hadamard kernel takes a call ("cluster", "mix", "persistent"); None = hadamard_kernel's
# rule.  Benchmarks and tests force one.
FORCE_HADAMARD: str | None = None


def hadamard_kernel(x: torch.Tensor, core: int, p: int, smooth, signs) -> str:
    """The Hadamard kernel for x [M, K = core * p] (all three take it; see the module doc)."""
    m, k = x.shape
    dev = x.device.index
    aligned = _cuda.aligned16(x, smooth, signs)
    cluster = core > 1 and aligned and _hadamard_small_fits(core, p, dev)
    mix = smooth is None and aligned and _hadamard_mix_fits(core, p, dev) and (signs is None or _unit_signs(signs))
    if FORCE_HADAMARD is not None:
        takes = {"cluster": cluster, "mix": mix, "persistent": True}
        if FORCE_HADAMARD not in takes:
            raise ValueError(f"FORCE_HADAMARD: expected one of {sorted(takes)} or None, got {FORCE_HADAMARD!r}")
        if not takes[FORCE_HADAMARD]:
            raise ValueError(f"FORCE_HADAMARD={FORCE_HADAMARD!r}: that kernel does not take K = {core} x {p} here")
        return FORCE_HADAMARD
    if mix and not (core == 1 and m <= SMALL_M_MAX):
        return "mix"
    if cluster and m <= SMALL_M_MAX and k >= SMALL_MIN_K:
        return "cluster"
    return "persistent"


@functools.lru_cache(maxsize=None)
def _kron_fits(n1: int, n2: int, device: int) -> bool:
    return bool(_cuda._C.kron_fits(n1, n2, device))


@register_fast("quantize_act", "cuda", _cuda.available)
def quantize_act_cuda(x, bits, smooth, hadamard_signs, kron_left, kron_right, clip_ratio=1.0):
    from .reference import quantize_act as reference
    args = (x, bits, smooth, hadamard_signs, kron_left, kron_right, clip_ratio)
    if x.dtype not in (torch.float16, torch.bfloat16):
        return reference(*args)
    m, k = x.shape
    if hadamard_signs is not None:
        core, p = hadamard_factors(k)
        if not _hadamard_fits(core, p):
            return reference(*args)
    elif kron_left is not None and not _kron_fits(kron_left.shape[0], kron_right.shape[0], x.device.index):
        return reference(*args)
    q = torch.empty(m, k // 2 if bits == 4 else k, dtype=torch.uint8 if bits == 4 else torch.int8, device=x.device)
    scale = torch.empty(m, dtype=torch.float32, device=x.device)
    if m == 0:
        return q, scale
    dev, stream = _cuda.launch_args(x)
    common = (bits, _cuda.DTYPE_CODE[x.dtype], dev, stream, float(clip_ratio))  # clip: fp32 in the kernel
    ptr = _cuda.ptr
    kernel = hadamard_kernel(x, core, p, smooth, hadamard_signs) if hadamard_signs is not None else None
    if kernel == "cluster":
        left = _hadamard_left(core, x.device)[0]
        _cuda._C.quantize_act_hadamard_small(ptr(x), ptr(smooth), ptr(hadamard_signs), ptr(left), ptr(q),
                                             ptr(scale), m, core, p, *common)
    elif kernel == "mix":
        left = _hadamard_mix_left(core, p, x.dtype, x.device)
        _cuda._C.quantize_act_hadamard_mix(ptr(x), ptr(hadamard_signs), ptr(left), ptr(q), ptr(scale), m, core, p,
                                           *common)
    elif kernel == "persistent":
        left, left_tf32 = _hadamard_left(core, x.device) if core > 1 else (None, None)
        _cuda._C.quantize_act_hadamard(ptr(x), ptr(smooth), ptr(hadamard_signs), ptr(left), ptr(left_tf32), ptr(q),
                                       ptr(scale), m, core, p, *common)
    elif kron_left is not None:
        left, right, consts = _kron_fragments(kron_left, kron_right)
        _cuda._C.quantize_act_kron(ptr(x), ptr(smooth), ptr(left), ptr(right), ptr(consts), ptr(q), ptr(scale), m,
                                   kron_left.shape[0], kron_right.shape[0], *common)
    else:
        _cuda._C.quantize_act(ptr(x), ptr(smooth), ptr(q), ptr(scale), m, k, *common)
    return q, scale
