// Shared device code of the weight-only (W3A16 / W4A16) kernels: the packed layout constants,
// the register decode of one 64-k "unit" into mma A fragments, and the mma / ldmatrix wrappers.
//
// Layout (see python/modaq/weight_only_layout.py, the executable definition): weights come in
// blocks of 16 rows x 256 k; lane l = 4g + t of a warp owns, per unit of 64 k, the 16 registers
// ("slots" i = 4s + j, k-step s, A register j) of mma.m16n8k16's A fragment, each a pair of
// consecutive k of one row.  A slot's two values sit at the same bit offset F (3p or 4p) of the
// two 16-bit halves of one 32-bit word, so
//     h = (word >> (F - b)) & (mask << b) | MAGIC        (MAGIC = 1024.0 fp16 / 128.0 bf16)
// is a half2 / bfloat162 holding MAGIC + v * 2^b exactly (b + width <= mantissa bits), and
//     r = h * 2^-b + (-(MAGIC * 2^-b + z))               (one HFMA2, exact: small integers)
// is (v - z) exactly.  Per pair: one LOP3 (inline PTX: written in C++, the AND and the OR stay
// two instructions) + one HFMA2 / HADD2, plus one shift per word for fields past the mantissa
// (SASS of the GEMV loop: ~1.4 decode instructions per weight per lane for W3, ~1.2 for W4).  The scale is applied to the fp32 mma accumulator once per group, so the
// dequantized weight is never rounded: the kernel computes the reference's exact products.
#pragma once

#include "common.cuh"

#include <type_traits>

namespace modaq {
namespace woq {

constexpr int kTileN = 16;    // rows per mma tile (A operand height)
constexpr int kTileK = 256;   // k per packed block
constexpr int kUnitK = 64;    // k per unit = 4 mma k-steps
constexpr int kUnits = kTileK / kUnitK;

template <int BITS> struct Bits;
template <> struct Bits<3> {
  static constexpr int kVecs = 3;     // 16-byte loads per lane per block
  static constexpr int kWords = 3;    // 32-bit words per lane per unit
};
template <> struct Bits<4> {
  static constexpr int kVecs = 4;
  static constexpr int kWords = 4;
};

// fp16 / bf16 magic-number arithmetic on packed pairs (bit patterns in uint32).
template <typename T> struct Pair;
template <> struct Pair<__half> {
  static constexpr uint32_t kMagic = 0x64006400u;  // 1024.0: ulp 1, 10 mantissa bits
  static constexpr int kMantissa = 10;
  static constexpr uint32_t pow2(int e) {  // 2^e in both halves
    return ((uint32_t)(15 + e) << 10) * 0x00010001u;
  }
  static constexpr uint32_t neg_pow2_bits(int e) { return 0x8000u | ((uint32_t)(15 + e) << 10); }  // -2^e
  __device__ static uint32_t fma(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
  }
  __device__ static float2 to_float2(uint32_t v) {
    return __half22float2(*reinterpret_cast<__half2*>(&v));
  }
  __device__ static uint32_t from_float2(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};
template <> struct Pair<__nv_bfloat16> {
  static constexpr uint32_t kMagic = 0x43004300u;  // 128.0: ulp 1, 7 mantissa bits
  static constexpr int kMantissa = 7;
  static constexpr uint32_t pow2(int e) { return ((uint32_t)(127 + e) << 7) * 0x00010001u; }
  static constexpr uint32_t neg_pow2_bits(int e) { return 0x8000u | ((uint32_t)(127 + e) << 7); }  // -2^e
  __device__ static uint32_t fma(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
  }
  __device__ static float2 to_float2(uint32_t v) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&v));
  }
  __device__ static uint32_t from_float2(float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// Field geometry: a field of width W at offset F is pre-shifted right by F - F % S and lands
// at b = F % S, where S (the largest multiple of W that fits the mantissa) keeps b + W within
// the mantissa.  Offsets used: b in {0, W, 2W, ...} < S, so one zero constant per b / W.
template <typename T, int W> struct Field {
  static constexpr int kShiftQuantum = (Pair<T>::kMantissa / W) * W;
  static constexpr int kNumB = kShiftQuantum / W;
};

// Zero-point constants of one group for the two rows (g, g + 8) a lane touches:
// c[bi][rh] = -(MAGIC * 2^-b + z_rh), b = bi W, splatted to both halves.  Built with integer ops:
// MAGIC * 2^-b = 2^(E - b) (E = mantissa bits) has ulp 2^-b, so adding z sets mantissa bits
// z << b, and the bit pattern is  sign | exponent(2^(E - b)) | (z << b)  (no int -> float).
template <typename T, int W>
struct ZeroConsts {
  uint32_t c[Field<T, W>::kNumB][2];
  // z2_lo / z2_hi: the zero point in both 16-bit halves (z * 0x00010001)
  __device__ __forceinline__ void set_pairs(uint32_t z2_lo, uint32_t z2_hi) {
#pragma unroll
    for (int bi = 0; bi < Field<T, W>::kNumB; ++bi) {
      constexpr uint32_t one = 0x00010001u;
      const uint32_t base = Pair<T>::neg_pow2_bits(Pair<T>::kMantissa - bi * W) * one;
      c[bi][0] = (z2_lo << (bi * W)) | base;
      c[bi][1] = (z2_hi << (bi * W)) | base;
    }
  }
  __device__ __forceinline__ void set(uint32_t z_lo, uint32_t z_hi) {
    set_pairs(z_lo * 0x00010001u, z_hi * 0x00010001u);
  }
};

// (a & MASK) | C in one LOP3 (written as C++, the compiler emits an AND and an OR).
template <uint32_t MASK, uint32_t C>
__device__ __forceinline__ uint32_t and_or(uint32_t a) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "n"(MASK), "n"(C));
  return d;
}
template <uint32_t MASK>
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "n"(MASK), "r"(c));
  return d;
}

// (v - z) of the field at offset F (within each half) of `word`, as a packed pair.
template <typename T, int W, int F>
__device__ __forceinline__ uint32_t decode_field(uint32_t word, int rh, const ZeroConsts<T, W>& zc) {
  constexpr int S = Field<T, W>::kShiftQuantum;
  constexpr int b = F % S;
  constexpr uint32_t mask = (((1u << W) - 1u) * 0x00010001u) << b;
  const uint32_t h = and_or<mask, Pair<T>::kMagic>(word >> (F - b));
  return Pair<T>::fma(h, Pair<T>::pow2(-b), zc.c[b / W][rh]);
}

// Decode one unit (a lane's 32 weights) into the 16 A-fragment registers a[4 s + j].
// Slot i = 4 s + j belongs to row g + 8 (j & 1), hence zero constant rh = i & 1.
template <typename T, int I>
__device__ __forceinline__ void decode_w3_slots(const uint32_t (&w)[3], const ZeroConsts<T, 3>& zc, uint32_t (&a)[16]) {
  if constexpr (I < 15) {
    a[I] = decode_field<T, 3, 3 * (I % 5)>(w[I / 5], I & 1, zc);
    decode_w3_slots<T, I + 1>(w, zc, a);
  }
}
template <typename T>
__device__ __forceinline__ void decode_unit(const uint32_t (&w)[3], const ZeroConsts<T, 3>& zc, uint32_t (&a)[16]) {
  decode_w3_slots<T, 0>(w, zc, a);
  // slot 15: bit b of both values is bit 15 / 31 of word b
  uint32_t spill = and_or<0x00010001u, Pair<T>::kMagic>(w[0] >> 15);
  spill = and_or<0x00020002u>(w[1] >> 14, spill);
  spill = and_or<0x00040004u>(w[2] >> 13, spill);
  a[15] = Pair<T>::fma(spill, Pair<T>::pow2(0), zc.c[0][1]);
}

template <typename T, int I>
__device__ __forceinline__ void decode_w4_slots(const uint32_t (&w)[4], const ZeroConsts<T, 4>& zc, uint32_t (&a)[16]) {
  if constexpr (I < 16) {
    a[I] = decode_field<T, 4, 4 * (I % 4)>(w[I / 4], I & 1, zc);
    decode_w4_slots<T, I + 1>(w, zc, a);
  }
}
template <typename T>
__device__ __forceinline__ void decode_unit(const uint32_t (&w)[4], const ZeroConsts<T, 4>& zc, uint32_t (&a)[16]) {
  decode_w4_slots<T, 0>(w, zc, a);
}

__device__ __forceinline__ uint32_t component(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// The lane's words of unit u of a block held as kVecs 16-byte vectors (layout in the header).
template <int BITS>
__device__ __forceinline__ void unit_words(const uint4 (&q)[Bits<BITS>::kVecs], int u,
                                           uint32_t (&w)[Bits<BITS>::kWords]) {
#pragma unroll
  for (int i = 0; i < Bits<BITS>::kWords; ++i) {
    w[i] = BITS == 3 ? component(q[i], u) : component(q[u], i);
  }
}

// One lane's share of one packed block, loaded into registers (the dequant kernel and the
// register-pipelined GEMV; the shared-memory GEMV streams blocks with cp.async instead):
// weights, and the (row g, row g + 8) scale / zero pairs of the block's 256 / GROUP groups.
template <int BITS, int GROUP>
struct Block {
  static constexpr int kGroups = kTileK / GROUP;  // 2 or 4
  uint4 q[Bits<BITS>::kVecs];
  uint32_t s[kGroups];          // half2 (scale row g, scale row g + 8) per group
  uint32_t z[kGroups / 2];      // bytes (z_g, z_g+8) per group, 2 groups per word

  // block = index of (tile, k-tile) in [T][KT] order
  __device__ __forceinline__ void load(const uint8_t* qweight, const __half* scales, const uint8_t* zeros,
                                       size_t block, int lane) {
    constexpr int kBytes = Bits<BITS>::kVecs * 512;
    const uint8_t* qb = qweight + block * kBytes + lane * 16;
#pragma unroll
    for (int v = 0; v < Bits<BITS>::kVecs; ++v) q[v] = ld_stream(qb + v * 512);
    const int g = lane >> 2;
    const size_t sz = block * 16 * kGroups + g * 2 * kGroups;  // element offset of lane's pairs
    if constexpr (kGroups == 2) {
      const uint2 sv = __ldg(reinterpret_cast<const uint2*>(scales + sz));
      s[0] = sv.x; s[1] = sv.y;
      z[0] = __ldg(reinterpret_cast<const uint32_t*>(zeros + sz));
    } else {
      const uint4 sv = __ldg(reinterpret_cast<const uint4*>(scales + sz));
      s[0] = sv.x; s[1] = sv.y; s[2] = sv.z; s[3] = sv.w;
      const uint2 zv = __ldg(reinterpret_cast<const uint2*>(zeros + sz));
      z[0] = zv.x; z[1] = zv.y;
    }
  }
  // Pull a whole block (weights + scales + zeros) towards L2 without holding registers: lanes
  // 0.. take one 128-byte line each.
  __device__ __forceinline__ static void prefetch(const uint8_t* qweight, const __half* scales,
                                                  const uint8_t* zeros, size_t block, int lane) {
    constexpr int kLines = Bits<BITS>::kVecs * 4;
    if (lane < kLines) prefetch_l2(qweight + block * (Bits<BITS>::kVecs * 512) + lane * 128);
    else if (lane == kLines) prefetch_l2(scales + block * 16 * kGroups);
    else if (lane == kLines + 1) prefetch_l2(zeros + block * 16 * kGroups);
  }
  // zero point of group j for row half rh
  __device__ __forceinline__ uint32_t zero(int j, int rh) const {
    const int byte = 2 * j + rh;
    return (z[byte / 4] >> (8 * (byte % 4))) & 0xFFu;
  }
  __device__ __forceinline__ float2 scale(int j) const {
    uint32_t v = s[j];
    return __half22float2(*reinterpret_cast<__half2*>(&v));
  }
};

// Arguments of both GEMV kernels (the register-pipelined one and the cp.async ring one).
struct GemvArgs {
  const void* x;
  const uint8_t* qweight;
  const __half* scales;
  const uint8_t* zeros;
  const void* bias;
  void* y;
  int M, N, K;
  int n_tiles, k_tiles;  // ceil(N / 16), ceil(K / 256)
  int kt_per_split, splits;
  int bias_dtype;
};

// Launch `kernel` on `grid` with the K-split ranks of a row block in one thread-block cluster
// (their partial sums meet in distributed shared memory); splits == 1 is a plain launch.
template <typename Kernel>
void launch_split_k(Kernel kernel, dim3 grid, int threads, size_t smem, cudaStream_t stream, int splits,
                    const GemvArgs& p) {
  launch_clustered(kernel, grid, threads, smem, stream, splits, p, "weight_only_gemv launch");
}

}  // namespace woq
}  // namespace modaq
