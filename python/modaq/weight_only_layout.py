"""Packed layout of the weight-only (W3A16 / W4A16) kernels, and its exact inverse.

The layout is shaped by the fused dequant-GEMV in csrc/weight_only_gemv.cuh, which feeds
tensor-core mma.m16n8k16 instructions with the *weight* as the A operand (16 output rows x 16 k)
and the activations as B.  Everything below follows from that:

Tiles.  N is padded to a multiple of 16 (one mma tile of rows), K to a multiple of 256 (a
"K-tile" = 4 "units" of 64 k = 16 mma k-steps).  Padding holds q = 0, scale = 0, zero = 0, so
padded weights dequantize to exactly 0.  Each (row tile T, K-tile kt) owns one contiguous block
of bytes; blocks are ordered [T][kt] so one warp streams its row tile's K range front to back.
Shapes: qweight uint8 [N_pad, K_pad * bits / 8], scales fp16 / zeros uint8 [N_pad, K_pad / gs]:
the sizes of a row-major packing, but the bytes are shuffled within each 16-row tile.

Fragment order.  Within a block, lane l = 4 g + t of a warp (g = l // 4, t = l % 4) owns the 32
weights of each unit u that mma's A fragment gives it: for k-step s (0..3) and register
j (0..3) the pair of k values  k = 64 u + 16 s + 8 (j >> 1) + 2 t + {0, 1}  of row
n = 16 T + g + 8 (j & 1).  The 16 registers of a unit are "slots" i = 4 s + j; each slot is a
pair (lo half = even k, hi half = odd k) that the kernel turns into one f16x2 / bf16x2 register.

  4-bit: slot i lives in 32-bit word s = i // 4 of the unit, nibble position p = i % 4:
         lo value at bits 4p..4p+3, hi value at bits 16+4p..  (4 words = 16 B per lane per unit).
         Block bytes: [u 0..3][lane 0..31][word 0..3]  -> one coalesced 16-byte load per unit.
  3-bit: 32 values = 96 bits = 3 words per lane per unit.  Slot i < 15 lives in word i // 5 at
         field p = i % 5: lo value at bits 3p..3p+2, hi value at bits 16+3p..  Bits 15 and 31 of
         the three words hold slot 15: bit b of its lo (hi) value is bit 15 (31) of word b.
         Block bytes: [word 0..2][lane 0..31][u 0..3]  -> three coalesced 16-byte loads give a
         lane its 3 words of all 4 units.
  Every field starts at bit 3p or 4p inside a 16-bit half, so the kernel extracts two values
  with one LOP3 into the mantissa of a magic fp16 / bf16 constant (no per-value shifts).

Scales / zeros.  Per block, [g 0..7][group j of the K-tile][row half rh 0..1] with row
n = 16 T + g + 8 rh: lane g loads the (row g, row g + 8) pairs of all 256/gs groups of its K-tile
with one 8- or 16-byte load.  Scales stay fp16 and zeros uint8 (the logical values, bit exact).
"""
from __future__ import annotations

import torch

TILE_N = 16
TILE_K = 256
UNIT_K = 64
GROUP_SIZES = (64, 128)
BLOCK_BYTES = {3: 3 * 512, 4: 4 * 512}  # packed bytes per (16-row tile, 256-k tile)


def padded_dims(n: int, k: int) -> tuple[int, int]:
    """(n rounded up to 16, k rounded up to 256)."""
    return -(-n // TILE_N) * TILE_N, -(-k // TILE_K) * TILE_K


def packed_shapes(bits: int, n: int, k: int, group_size: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shapes / dtypes of (qweight, scales, zeros) for an [n, k] weight."""
    if bits not in BLOCK_BYTES:
        raise ValueError(f"bits: expected 3 or 4, got {bits!r}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size: expected one of {GROUP_SIZES}, got {group_size!r}")
    n_pad, k_pad = padded_dims(n, k)
    groups = (n_pad, k_pad // group_size)
    return {"qweight": ((n_pad, k_pad * bits // 8), torch.uint8),
            "scales": (groups, torch.float16), "zeros": (groups, torch.uint8)}


def _check_logical(bits: int, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> int:
    """Validate the logical tensors; return the group size."""
    for name, t, dt in (("q", q, torch.uint8), ("scale", scale, None), ("zero", zero, torch.uint8)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D tensor, got {type(t).__name__} "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else ''}")
        if dt is not None and t.dtype != dt:
            raise TypeError(f"{name}: expected {dt}, got {t.dtype}")
    n, k = q.shape
    if scale.shape != zero.shape or scale.shape[0] != n or scale.shape[1] == 0 or k % scale.shape[1]:
        raise ValueError(f"scale / zero: expected equal shapes [N, K // group] for q {tuple(q.shape)}, "
                         f"got {tuple(scale.shape)} and {tuple(zero.shape)}")
    group = k // scale.shape[1]
    if group not in GROUP_SIZES:
        raise ValueError(f"scale: implies group_size {group}; the {bits}-bit kernels take {GROUP_SIZES}")
    maxq = 2 ** bits - 1
    if bool((q > maxq).any()) or bool((zero > maxq).any()):
        raise ValueError(f"q / zero: {bits}-bit values must lie in [0, {maxq}]")
    return group


def _pad2(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    out = t.new_zeros(rows, cols)
    out[: t.shape[0], : t.shape[1]] = t
    return out


def _to_slots(q: torch.Tensor) -> torch.Tensor:
    """q [n_pad, k_pad] -> [T, KT, g, t, u, slot(16), half(2)] with slot = 4 s + 2 kh + rh."""
    tiles, ktiles = q.shape[0] // TILE_N, q.shape[1] // TILE_K
    v = q.reshape(tiles, 2, 8, ktiles, 4, 4, 2, 4, 2)  # T rh g | KT u s kh t h
    v = v.permute(0, 3, 2, 7, 4, 5, 6, 1, 8)  # T KT g t u s kh rh h
    return v.reshape(tiles, ktiles, 8, 4, 4, 16, 2)


def _from_slots(v: torch.Tensor) -> torch.Tensor:
    """Inverse of _to_slots: -> [n_pad, k_pad]."""
    tiles, ktiles = v.shape[0], v.shape[1]
    v = v.reshape(tiles, ktiles, 8, 4, 4, 4, 2, 2, 2)  # T KT g t u s kh rh h
    v = v.permute(0, 7, 2, 1, 4, 5, 6, 3, 8)  # T rh g KT u s kh t h
    return v.reshape(tiles * TILE_N, ktiles * TILE_K)


def _words_to_bytes(words: torch.Tensor) -> torch.Tensor:
    """int64 words holding uint32 values -> little-endian uint8 [..., 4 * last]."""
    b = torch.stack([(words >> (8 * i)) & 0xFF for i in range(4)], dim=-1)
    return b.to(torch.uint8).reshape(*words.shape[:-1], -1)


def _bytes_to_words(b: torch.Tensor) -> torch.Tensor:
    b = b.to(torch.int64).reshape(*b.shape[:-1], -1, 4)
    return b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)


def _pack_q4(slots: torch.Tensor) -> torch.Tensor:
    """slots [T, KT, g, t, u, 16, 2] -> [T, KT, 2048] bytes, order [u][lane][word]."""
    v = slots.to(torch.int64).reshape(*slots.shape[:5], 4, 4, 2)  # ... word(s) pos(j) h
    shifts = 4 * torch.arange(4, device=v.device)
    words = ((v[..., 0] << shifts) | (v[..., 1] << (shifts + 16))).sum(dim=-1)  # [T KT g t u word]
    words = words.permute(0, 1, 4, 2, 3, 5)  # T KT u g t word
    return _words_to_bytes(words.reshape(*words.shape[:2], -1))


def _unpack_q4(qweight: torch.Tensor, tiles: int, ktiles: int) -> torch.Tensor:
    words = _bytes_to_words(qweight).reshape(tiles, ktiles, 4, 8, 4, 4)  # T KT u g t word
    words = words.permute(0, 1, 3, 4, 2, 5)[..., None, None]  # T KT g t u word 1 1
    shifts = (4 * torch.arange(4, device=qweight.device))[:, None] + torch.tensor([0, 16], device=qweight.device)
    vals = (words >> shifts) & 0xF  # T KT g t u word pos h
    return vals.reshape(tiles, ktiles, 8, 4, 4, 16, 2).to(torch.uint8)


def _pack_q3(slots: torch.Tensor) -> torch.Tensor:
    """slots [T, KT, g, t, u, 16, 2] -> [T, KT, 1536] bytes, order [word][lane][u]."""
    v = slots.to(torch.int64)
    shifts = 3 * torch.arange(5, device=v.device)
    words = []
    for w in range(3):
        f = v[..., 5 * w: 5 * w + 5, :]
        word = ((f[..., 0] << shifts) | (f[..., 1] << (shifts + 16))).sum(dim=-1)
        spill = v[..., 15, :]  # slot 15: bit w of each value goes to bit 15 / 31 of word w
        word = word | (((spill[..., 0] >> w) & 1) << 15) | (((spill[..., 1] >> w) & 1) << 31)
        words.append(word)
    words = torch.stack(words, dim=2)  # T KT word g t u
    return _words_to_bytes(words.reshape(*words.shape[:2], -1))


def _unpack_q3(qweight: torch.Tensor, tiles: int, ktiles: int) -> torch.Tensor:
    words = _bytes_to_words(qweight).reshape(tiles, ktiles, 3, 8, 4, 4)  # T KT word g t u
    words = words.permute(0, 1, 3, 4, 5, 2)  # T KT g t u word
    half = torch.tensor([0, 16], device=qweight.device)
    fields = (3 * torch.arange(5, device=qweight.device))[:, None] + half  # [5, 2]
    main = (words[..., None, None] >> fields) & 7  # T KT g t u word p h
    main = main.reshape(*words.shape[:5], 15, 2)
    spill = sum(((words[..., b, None] >> (15 + half)) & 1) << b for b in range(3))  # T KT g t u h
    return torch.cat([main, spill[..., None, :]], dim=-2).to(torch.uint8)


def _pack_groups(t: torch.Tensor, n_pad: int, k_pad: int, group: int) -> torch.Tensor:
    """[N, G] -> [N_pad, G_pad] holding, per (T, KT) block, the order [g][j][rh]."""
    gt = TILE_K // group
    p = _pad2(t, n_pad, k_pad // group)
    p = p.reshape(n_pad // TILE_N, 2, 8, k_pad // TILE_K, gt).permute(0, 3, 2, 4, 1)
    return p.reshape(n_pad, k_pad // group).contiguous()


def _unpack_groups(p: torch.Tensor, n: int, k: int, group: int) -> torch.Tensor:
    n_pad, k_pad = padded_dims(n, k)
    tiles, ktiles, gt = n_pad // TILE_N, k_pad // TILE_K, TILE_K // group
    t = p.reshape(tiles, ktiles, 8, gt, 2).permute(0, 4, 2, 1, 3).reshape(n_pad, k_pad // group)
    return t[:n, : k // group].contiguous()


def pack(bits: int, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logical (q uint8 [N, K], scale fp16-able [N, G], zero uint8 [N, G]) -> packed tensors."""
    group = _check_logical(bits, q, scale, zero)
    n, k = q.shape
    n_pad, k_pad = padded_dims(n, k)
    slots = _to_slots(_pad2(q, n_pad, k_pad))
    qweight = (_pack_q3(slots) if bits == 3 else _pack_q4(slots)).reshape(n_pad, k_pad * bits // 8)
    scales = _pack_groups(scale.to(torch.float16), n_pad, k_pad, group)
    zeros = _pack_groups(zero, n_pad, k_pad, group)
    return qweight, scales, zeros


def unpack(bits: int, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, n: int, k: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact inverse of pack for an [n, k] weight: (q [n, k], scale [n, G], zero [n, G])."""
    n_pad, k_pad = padded_dims(n, k)
    tiles, ktiles = n_pad // TILE_N, k_pad // TILE_K
    group = n_pad * k_pad // max(scales.numel(), 1)
    if (qweight.numel() != n_pad * k_pad * bits // 8 or group not in GROUP_SIZES
            or scales.numel() * group != n_pad * k_pad or zeros.numel() != scales.numel()):
        raise ValueError(f"qweight / scales / zeros: sizes {qweight.numel()}, {scales.numel()}, {zeros.numel()} "
                         f"are not pack_w{bits} of an [{n}, {k}] weight")
    blocks = qweight.reshape(tiles, ktiles, BLOCK_BYTES[bits])
    slots = _unpack_q3(blocks, tiles, ktiles) if bits == 3 else _unpack_q4(blocks, tiles, ktiles)
    q = _from_slots(slots)[:n, :k].contiguous()
    return q, _unpack_groups(scales, n, k, group), _unpack_groups(zeros, n, k, group)
