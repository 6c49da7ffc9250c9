"""Logical quantization formats: RTN quantizers, dequantizers, and bit-exact pack / unpack.

Logical tensors (what every method and every reference computes with):

  weight-only, asymmetric, grouped along K (W3A16, W4A16):
      q     uint8   [N, K]      values in [0, 2^b - 1]
      scale float16 [N, K // g]
      zero  uint8   [N, K // g] integer zero point in [0, 2^b - 1]
      w ~= (q - zero) * scale
  weight, symmetric, per output channel (W4A8, W4A4, W8A8):
      q     int8    [N, K]      values in [-(2^(b-1) - 1), 2^(b-1) - 1]
      scale float32 [N]
      w ~= q * scale
  activations, symmetric, per token (dynamic):
      q     int8    [M, K]
      scale float32 [M]     clip_ratio * absmax / qmax (clip_ratio in (0, 1], default 1)
      x ~= q * scale

Rounding is round-half-to-even everywhere (torch.round, CUDA rint), and the per-token
activation quantizer is written as q = rint(x * (qmax / absmax)) so that a CUDA kernel doing
the same fp32 operations reproduces it bit for bit.  A token whose absmax is 0 gets scale 0
and q = 0; a token holding NaN or inf gets a non-finite scale, so the NaN reaches the output
instead of being quantized into silently finite garbage.

Packed layouts (the kernel's business, inverted exactly by the matching unpack_*):
  pack_int3:  8 values -> 3 bytes, little-endian bit stream (value j at bits 3j..3j+2).
  pack_uint4 / pack_int4: 2 values -> 1 byte, even k in the low nibble.
  pack_w3 / pack_w4 / pack_w8: the layouts the GEMM kernels read.
  pack_w4_sym / pack_a4: 2 values -> 1 byte, "half-block paired" along K (blocks of 128:
  byte j holds values j and j + 64 of its block), so GEMM tiles unpack without interleaving.
"""
from __future__ import annotations

import numbers
import struct
from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = [
    "QuantFormat", "FORMATS", "get_format",
    "AsymWeight", "SymWeight", "quantize_weight_asym", "dequantize_weight_asym",
    "quantize_weight_sym", "dequantize_weight_sym", "quantize_act_sym", "dequantize_act_sym",
    "fake_quantize_weight", "fake_quantize_act", "check_clip_ratio", "fp32_value",
    "pack_int3", "unpack_int3", "pack_uint4", "unpack_uint4", "pack_int4", "unpack_int4",
    "PackedAsymWeight", "pack_w3", "unpack_w3", "pack_w4", "unpack_w4",
    "pack_w4_sym", "unpack_w4_sym", "pack_w8", "unpack_w8", "pack_a4", "unpack_a4", "packed_shapes",
]


@dataclass(frozen=True)
class QuantFormat:
    """One row of the format table: bit widths, symmetry and default weight grouping."""

    name: str
    weight_bits: int
    act_bits: int  # 16 = activations stay fp16 / bf16
    weight_symmetric: bool
    default_group_size: int | None  # None = one scale per output channel

    @property
    def weight_only(self) -> bool:
        return self.act_bits == 16


FORMATS: dict[str, QuantFormat] = {
    "w3a16": QuantFormat("w3a16", 3, 16, False, 128),
    "w4a16": QuantFormat("w4a16", 4, 16, False, 128),
    "w4a8": QuantFormat("w4a8", 4, 8, True, None),
    "w4a4": QuantFormat("w4a4", 4, 4, True, None),
    "w8a8": QuantFormat("w8a8", 8, 8, True, None),
}
WEIGHT_ONLY_GROUP_SIZES = (64, 128)


def get_format(name: str | QuantFormat) -> QuantFormat:
    """Look a format up by name ('w4a8', case-insensitive); raise naming the valid ones."""
    if isinstance(name, QuantFormat):
        return name
    key = str(name).lower()
    if key not in FORMATS:
        raise ValueError(f"format: expected one of {sorted(FORMATS)}, got {name!r}")
    return FORMATS[key]


# ----------------------------------------------------------------------------- checks

def _check_matrix(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...] | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: holds NaN or inf; weights must be finite to be quantized")


def check_group_size(group_size: int, in_features: int, name: str = "group_size") -> None:
    if not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"{name}: expected a positive int, got {group_size!r}")
    if in_features % group_size:
        raise ValueError(
            f"{name}: in_features (K = {in_features}) must be divisible by group_size ({group_size})")


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ------------------------------------------------------------------------- quantizers

class AsymWeight(NamedTuple):
    q: torch.Tensor  # uint8 [N, K]
    scale: torch.Tensor  # float16 [N, G]
    zero: torch.Tensor  # uint8 [N, G]


class SymWeight(NamedTuple):
    q: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # float32 [N]


def quantize_weight_asym(w: torch.Tensor, bits: int, group_size: int = 128) -> AsymWeight:
    """RTN asymmetric group quantization of w [N, K] (GPTQ / AWQ convention).

    Each group's range is widened to include 0 (so 0 is exact and the zero point lies in
    [0, 2^b - 1]); scale = (max - min) / (2^b - 1) rounded to fp16 first, then
    zero = rint(-min / scale), q = clamp(rint(w / scale) + zero, 0, 2^b - 1).
    """
    _check_matrix("w", w, _FLOATS)
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"bits: expected 2, 3, 4 or 8, got {bits!r}")
    n, k = w.shape
    check_group_size(group_size, k)
    _check_finite("w", w)
    maxq = 2 ** bits - 1
    wg = w.detach().float().reshape(n, k // group_size, group_size)
    lo = wg.amin(dim=-1).clamp(max=0)
    hi = wg.amax(dim=-1).clamp(min=0)
    scale = ((hi - lo) / maxq).to(torch.float16)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero group: any scale
    s = scale.float()
    zero = torch.round(-lo / s).clamp(0, maxq)
    q = torch.clamp(torch.round(wg / s[..., None]) + zero[..., None], 0, maxq)
    return AsymWeight(q.reshape(n, k).to(torch.uint8), scale, zero.to(torch.uint8))


def dequantize_weight_asym(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                           group_size: int) -> torch.Tensor:
    """(q - zero) * scale in fp32, [N, K]."""
    n, k = q.shape
    qg = q.float().reshape(n, k // group_size, group_size)
    return ((qg - zero.float()[..., None]) * scale.float()[..., None]).reshape(n, k)


def _sym_quantize(x: torch.Tensor, bits: int, clip_ratio: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization along the last dim: (q int8, scale fp32 [...]).

    absmax = clip_ratio * max|x| (one fp32 product; clip_ratio 1 leaves it untouched),
    inv = qmax / absmax (0 where absmax is 0 or NaN), q = clamp(rint(x * inv), -qmax, qmax)
    (values beyond the clipped range saturate), scale = absmax / qmax.
    """
    qmax = 2 ** (bits - 1) - 1
    xf = x.float()
    absmax = xf.abs().amax(dim=-1)
    if clip_ratio != 1.0:  # fp32(clip) * absmax rounded once to fp32, as the CUDA kernels do
        absmax = absmax * fp32_value(clip_ratio)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    # a true division (`qmax / tensor` would be reciprocal(tensor) * qmax: a different last bit)
    inv = torch.where(absmax > 0, torch.full_like(safe, qmax) / safe, torch.zeros_like(absmax))
    q = torch.round(torch.nan_to_num(xf * inv[..., None], nan=0.0)).clamp(-qmax, qmax)
    return q.to(torch.int8), absmax / qmax


def quantize_weight_sym(w: torch.Tensor, bits: int) -> SymWeight:
    """RTN symmetric per-output-channel quantization of w [N, K]: scale = absmax / (2^(b-1) - 1)."""
    _check_matrix("w", w, _FLOATS)
    if bits not in (4, 8):
        raise ValueError(f"bits: expected 4 or 8, got {bits!r}")
    _check_finite("w", w)
    q, scale = _sym_quantize(w.detach(), bits)
    return SymWeight(q, scale)


def dequantize_weight_sym(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def fp32_value(v: float) -> float:
    """The Python float holding v rounded to the nearest fp32 (what a C++ `float` argument gets)."""
    return struct.unpack("f", struct.pack("f", v))[0]


def check_clip_ratio(v, name: str = "clip_ratio") -> float:
    """An activation clip ratio as a float in (0, 1] (nonzero in fp32); TypeError / ValueError
    naming the argument `name` otherwise."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a float in (0, 1], got {type(v).__name__}")
    if not 2.0 ** -150 < float(v) <= 1.0:  # 2^-150 and below round to 0 in fp32
        raise ValueError(f"{name}: expected a float in (0, 1], got {v!r}")
    return float(v)


def quantize_act_sym(x: torch.Tensor, bits: int, clip_ratio: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric dynamic quantization of x [M, K] -> (q int8 [M, K], scale fp32 [M]).

    clip_ratio in (0, 1] shrinks each token's range to clip_ratio * absmax (activation
    clipping, FlatQuant's LAC): scale = clip_ratio * absmax / qmax, larger values saturate.
    """
    _check_matrix("x", x, _FLOATS)
    if bits not in (4, 8):
        raise ValueError(f"bits: expected 4 or 8, got {bits!r}")
    return _sym_quantize(x, bits, check_clip_ratio(clip_ratio))


def dequantize_act_sym(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def fake_quantize_weight(w: torch.Tensor, fmt: str | QuantFormat, group_size: int | None = None) -> torch.Tensor:
    """Quantize-dequantize w [N, K] in the weight format of `fmt`; same dtype as w.

    This is what calibration searches measure: the exact weights the deployed module uses.
    """
    fmt = get_format(fmt)
    if fmt.weight_symmetric:
        q, s = quantize_weight_sym(w, fmt.weight_bits)
        return dequantize_weight_sym(q, s).to(w.dtype)
    g = group_size or fmt.default_group_size
    q, s, z = quantize_weight_asym(w, fmt.weight_bits, g)
    return dequantize_weight_asym(q, s, z, g).to(w.dtype)


def fake_quantize_act(x: torch.Tensor, bits: int, clip_ratio: float = 1.0) -> torch.Tensor:
    """Per-token quantize-dequantize of x [..., K] (identity for bits >= 16); same dtype."""
    if bits >= 16:
        return x
    shape = x.shape
    q, s = quantize_act_sym(x.reshape(-1, shape[-1]), bits, clip_ratio)
    return dequantize_act_sym(q, s).reshape(shape).to(x.dtype)


# ---------------------------------------------------------------------------- packing

def pack_int3(q: torch.Tensor) -> torch.Tensor:
    """Pack uint8 values in [0, 8) along the last dim, 8 values -> 3 bytes (no padding).

    The 8 values of a block form a 24-bit little-endian word: value j occupies bits 3j..3j+2,
    byte i holds bits 8i..8i+7.  Requires last dim % 8 == 0.
    """
    if q.dtype != torch.uint8:
        raise TypeError(f"q: expected uint8, got {q.dtype}")
    if q.shape[-1] % 8:
        raise ValueError(f"q: last dim must be a multiple of 8 for 3-bit packing, got {q.shape[-1]}")
    if bool((q > 7).any()):
        raise ValueError("q: 3-bit values must lie in [0, 7]")
    v = q.reshape(*q.shape[:-1], -1, 8).to(torch.int32)
    shifts = torch.arange(0, 24, 3, dtype=torch.int32, device=q.device)
    word = (v << shifts).sum(dim=-1)  # disjoint bit fields: sum == or
    out = torch.stack([(word >> (8 * i)) & 0xFF for i in range(3)], dim=-1)
    return out.to(torch.uint8).reshape(*q.shape[:-1], -1)


def unpack_int3(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int3: uint8 [..., 3n/8 * 8 / 3] -> uint8 [..., n]."""
    if packed.dtype != torch.uint8 or packed.shape[-1] % 3:
        raise ValueError(f"packed: expected uint8 with last dim % 3 == 0, got {packed.dtype} {tuple(packed.shape)}")
    b = packed.reshape(*packed.shape[:-1], -1, 3).to(torch.int32)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    shifts = torch.arange(0, 24, 3, dtype=torch.int32, device=packed.device)
    v = (word[..., None] >> shifts) & 7
    return v.to(torch.uint8).reshape(*packed.shape[:-1], -1)


def pack_uint4(q: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Pack uint8 values in [0, 16) two per byte along the last dim, even index in the low nibble."""
    if q.dtype != torch.uint8:
        raise TypeError(f"q: expected uint8, got {q.dtype}")
    if q.shape[-1] % 2:
        raise ValueError(f"q: last dim must be even for 4-bit packing, got {q.shape[-1]}")
    if check and bool((q > 15).any()):  # check=False: no device sync (CUDA-graph capture)
        raise ValueError("q: 4-bit unsigned values must lie in [0, 15]")
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_uint4(packed: torch.Tensor) -> torch.Tensor:
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed: expected uint8, got {packed.dtype}")
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(*packed.shape[:-1], -1)


def pack_int4(q: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Pack int8 values in [-8, 8) as two's-complement nibbles, two per byte (even k low)."""
    if q.dtype != torch.int8:
        raise TypeError(f"q: expected int8, got {q.dtype}")
    if check and bool(((q < -8) | (q > 7)).any()):
        raise ValueError("q: 4-bit signed values must lie in [-8, 7]")
    return pack_uint4((q & 0xF).to(torch.uint8), check=False)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    u = unpack_uint4(packed).to(torch.int8)
    return torch.where(u > 7, u - 16, u)


# ------------------------------------------------------- kernel layouts (op inputs)
# The ops take weights in these layouts.  A kernel that wants another layout changes the
# pair here (and the round-trip tests keep it honest); nothing else depends on it.

class PackedAsymWeight(NamedTuple):
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor


def pack_w3(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> PackedAsymWeight:
    """W3A16 layout (modaq.weight_only_layout): q uint8 [N, K] in [0, 7], scale [N, G], zero
    uint8 [N, G] with G = K / group, group in (64, 128) -> qweight uint8 [Np, 3 Kp / 8],
    scales fp16 and zeros uint8 [Np, Kp / group]; Np = N rounded up to 16, Kp = K rounded up to
    256 (zero padded), bytes shuffled into mma fragment order within 16-row x 256-k tiles."""
    from . import weight_only_layout
    return PackedAsymWeight(*weight_only_layout.pack(3, q, scale, zero))


def unpack_w3(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, n: int, k: int) -> AsymWeight:
    """Inverse of pack_w3 for an [n, k] weight (bit exact)."""
    from . import weight_only_layout
    return AsymWeight(*weight_only_layout.unpack(3, qweight, scales, zeros, n, k))


def pack_w4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> PackedAsymWeight:
    """W4A16 layout (modaq.weight_only_layout): like pack_w3 with q in [0, 15] and qweight
    uint8 [Np, Kp / 2] (4 bits per weight)."""
    from . import weight_only_layout
    return PackedAsymWeight(*weight_only_layout.pack(4, q, scale, zero))


def unpack_w4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, n: int, k: int) -> AsymWeight:
    """Inverse of pack_w4 for an [n, k] weight (bit exact)."""
    from . import weight_only_layout
    return AsymWeight(*weight_only_layout.unpack(4, qweight, scales, zeros, n, k))


# 4-bit layout of the integer GEMMs (W4A8 / W4A4 weights, W4A4 activations): "half-block
# pairing".  K is cut into blocks of PAIR_BLOCK = 128 values (the last block holds the
# remaining L = K mod 128 values, L even); byte j of a block of length L holds value j in its
# low nibble and value j + L/2 in its high nibble (two's complement).  A GEMM tile then
# unpacks a packed [rows, 64] slice into two int8 tiles covering k0..k0+63 and k0+64..k0+127,
# each matching a contiguous slice of an int8 activation row: no interleaving in registers.
PAIR_BLOCK = 128


def pair_indices(k: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) int64 [k/2]: packed byte j of a half-block-paired row of length k (even) holds
    value lo[j] in its low nibble and value hi[j] in its high nibble."""
    if k % 2:
        raise ValueError(f"k: expected an even length for 4-bit packing, got {k}")
    j = torch.arange(k // 2, device=device)
    start = (j // (PAIR_BLOCK // 2)) * PAIR_BLOCK
    half = torch.clamp(k - start, max=PAIR_BLOCK) // 2
    pos = j - start // 2
    return start + pos, start + half + pos


def _pack_paired(q: torch.Tensor, check: bool, lo_min: int) -> torch.Tensor:
    if q.dtype != torch.int8:
        raise TypeError(f"q: expected int8, got {q.dtype}")
    if q.dim() < 1 or q.shape[-1] % 2:
        raise ValueError(f"q: last dim must be even for 4-bit packing, got shape {tuple(q.shape)}")
    if check and bool(((q < lo_min) | (q > 7)).any()):  # check=False: no device sync
        raise ValueError(f"q: 4-bit signed values must lie in [{lo_min}, 7]")
    lo, hi = pair_indices(q.shape[-1], q.device)
    u = (q & 0xF).to(torch.uint8)
    return (u[..., lo] | (u[..., hi] << 4)).contiguous()


def _unpack_paired(packed: torch.Tensor) -> torch.Tensor:
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed: expected uint8, got {packed.dtype}")
    k = packed.shape[-1] * 2
    lo, hi = pair_indices(k, packed.device)
    nib = packed.view(torch.int8)
    out = torch.empty(*packed.shape[:-1], k, dtype=torch.int8, device=packed.device)
    out[..., lo] = (nib << 4) >> 4  # arithmetic shifts sign-extend the nibbles
    out[..., hi] = nib >> 4
    return out


def pack_w4_sym(q: torch.Tensor) -> torch.Tensor:
    """W4A8 / W4A4 weight layout: int8 [N, K] in [-7, 7] -> uint8 [N, K/2], rows half-block
    paired (see PAIR_BLOCK above)."""
    return _pack_paired(q, True, -8)


def unpack_w4_sym(qweight: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of pack_w4_sym for an [n, k] weight."""
    return _unpack_paired(qweight.reshape(n, k // 2))


def pack_w8(q: torch.Tensor) -> torch.Tensor:
    """W8A8 weight layout: int8 [N, K] row-major."""
    if q.dtype != torch.int8:
        raise TypeError(f"q: expected int8, got {q.dtype}")
    return q.contiguous()


def unpack_w8(qweight: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of pack_w8 for an [n, k] weight."""
    return qweight.reshape(n, k)


def pack_a4(q: torch.Tensor, check: bool = True) -> torch.Tensor:
    """int4 activations int8 [M, K] -> uint8 [M, K/2], half-block paired like pack_w4_sym;
    quantize_act (bits = 4) writes this layout."""
    return _pack_paired(q, check, -8)


def unpack_a4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_a4: uint8 [..., K/2] -> int8 [..., K]."""
    return _unpack_paired(packed)


def packed_shapes(fmt: str | QuantFormat, n: int, k: int, group_size: int | None = None
                  ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes of the packed weight tensors that pack_* produce for an [n, k] weight.

    Modules allocate their buffers from this (no packing of dummy data); the round-trip tests
    check it against what pack_* really returns.
    """
    fmt = get_format(fmt)
    if fmt.weight_only:
        from . import weight_only_layout
        return weight_only_layout.packed_shapes(fmt.weight_bits, n, k, group_size or fmt.default_group_size)
    if fmt.weight_bits == 4:
        return {"qweight": ((n, k // 2), torch.uint8)}
    return {"qweight": ((n, k), torch.int8)}
