// Device helpers shared by the activation quantizers (quantize_act.cu, quantize_act_hadamard.cu,
// quantize_act_transform.cu): the per-element quantizer, the half-block-paired int4 layout,
// 16-byte vector loads, the first FWHT stages, and the bf16 / tf32 mma.sync used by the online
// transforms.
#pragma once

#include "common.cuh"

namespace modaq {

// q = clamp(rint(v * inv), -qmax, qmax), NaN (NaN input or inf * 0) -> 0.  The same fp32
// operations as modaq.formats.quantize_act_sym, so the result is bit-identical for equal v.
__device__ __forceinline__ int quantize_one(float v, float inv, int qmax) {
  float r = rintf(v * inv);
  if (r != r) r = 0.f;
  return static_cast<int>(fminf(fmaxf(r, -static_cast<float>(qmax)), static_cast<float>(qmax)));
}

// clamp(rint(v * inv), -qmax, qmax) as the float bits of t + 1.5 * 2^23 (t clamped first: the
// same result): the integer sits in the low bits, two's complement.  inv > 0 and v finite here;
// clamp = false where |v * inv| <= qmax is known (clip = 1: |v| <= absmax).  No FMA: v * inv
// rounds first, as in modaq.formats.quantize_act_sym.
__device__ __forceinline__ uint32_t rounded_bits(float v, float inv, float qmax, bool clamp = true) {
  float t = __fmul_rn(v, inv);
  if (clamp) t = fminf(fmaxf(t, -qmax), qmax);
  return __float_as_uint(t + 12582912.f);
}

// |v| folded into a running max that propagates NaN (NaN bits order above +inf as unsigned, so
// the max of the float bits reduces it across lanes).
__device__ __forceinline__ float max_abs_nan(float acc, float v) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(acc), "f"(fabsf(v)));
  return r;
}

// Quantization range of a token: clip * absmax with clip = fp32(clip_ratio) in (0, 1], one
// fp32 product as in modaq.formats._sym_quantize (activation clipping, FlatQuant's LAC).
// clip = 1 returns absmax exactly, so the unclipped output stays bit-identical; values beyond
// a clipped range saturate at +-qmax in quantize_one.  inv_scale / token_scale take this range.
__device__ __forceinline__ float clipped_range(float amax, float clip) { return amax * clip; }

// Reciprocal scale of a token: qmax / range, or 0 for an all-zero or non-finite token.
__device__ __forceinline__ float inv_scale(float amax, bool nan, int qmax) {
  return (amax > 0.f && !nan) ? static_cast<float>(qmax) / amax : 0.f;
}

__device__ __forceinline__ float token_scale(float amax, bool nan, int qmax) {
  return nan ? __int_as_float(0x7fc00000) : amax / static_cast<float>(qmax);
}

// Half-block-paired int4 layout (modaq.formats.pair_indices): K is cut into blocks of 128
// values, the last of length L = K mod 128; byte j of a block holds value j (low nibble)
// and value j + L/2 (high nibble).  Returns the two row indices packed into byte j.
__device__ __forceinline__ void paired_indices(int j, int K, int& lo, int& hi) {
  const int start = (j >> 6) << 7;
  const int len = min(128, K - start);
  const int pos = j - (start >> 1);
  lo = start + pos;
  hi = start + (len >> 1) + pos;
}

__device__ __forceinline__ uint8_t pack_nibbles(int lo, int hi) {
  return static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
}

// 8 fp16 / bf16 values of one 16-byte vector as fp32.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& raw, float (&f)[8]) {
  const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int j = 0; j < 8; ++j) f[j] = to_float(h[j]);
}

// Load 8 values at k (16-byte aligned), divided by smooth[k..k+7] when smooth != nullptr.
template <typename T>
__device__ __forceinline__ void smoothed8(const uint4& raw, const float* smooth, int64_t k, float (&f)[8]) {
  unpack8<T>(raw, f);
  if (smooth) {
    const float4 s0 = __ldg(reinterpret_cast<const float4*>(smooth + k));
    const float4 s1 = __ldg(reinterpret_cast<const float4*>(smooth + k) + 1);
    f[0] = f[0] / s0.x; f[1] = f[1] / s0.y; f[2] = f[2] / s0.z; f[3] = f[3] / s0.w;
    f[4] = f[4] / s1.x; f[5] = f[5] / s1.y; f[6] = f[6] / s1.z; f[7] = f[7] / s1.w;
  }
}

// Quantize 8 values and pack them as 8 int8 bytes in a uint2 (little-endian: value 0 first).
__device__ __forceinline__ uint2 quantize8(const float (&f)[8], float inv, int qmax) {
  uint32_t w[2] = {0u, 0u};
#pragma unroll
  for (int j = 0; j < 8; ++j)
    w[j >> 2] |= (static_cast<uint32_t>(quantize_one(f[j], inv, qmax)) & 0xFFu) << (8 * (j & 3));
  return make_uint2(w[0], w[1]);
}

// FWHT butterflies over the 2^NB values of v whose indices differ in NB consecutive index bits,
// in the reference's order (stage h = 1, 2, 4, ..., each pair a, b -> a + b, a - b).
template <int NB>
__device__ __forceinline__ void fwht_registers(float (&v)[1 << NB]) {
#pragma unroll
  for (int h = 1; h < (1 << NB); h <<= 1) {
#pragma unroll
    for (int j = 0; j < (1 << NB); ++j) {
      if (!(j & h)) {
        const float a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
    }
  }
}

// A Hadamard token's 16-byte chunk at k: (x / smooth) * signs, then FWHT stages h = 1, 2, 4
// (smooth, signs: [K] or null).
template <typename T>
__device__ __forceinline__ void hadamard_chunk8(const uint4& raw, const float* smooth, const float* signs, int64_t k,
                                                float (&f)[8]) {
  smoothed8<T>(raw, smooth, k, f);
  if (signs) {
    const float4 s0 = __ldg(reinterpret_cast<const float4*>(signs + k));
    const float4 s1 = __ldg(reinterpret_cast<const float4*>(signs + k) + 1);
    f[0] *= s0.x; f[1] *= s0.y; f[2] *= s0.z; f[3] *= s0.w;
    f[4] *= s1.x; f[5] *= s1.y; f[6] *= s1.z; f[7] *= s1.w;
  }
  fwht_registers<3>(f);
}

// ------------------------------------------------------------------ tensor-core helpers
// x = t0 + t1 + t2 with each term a bf16 (8 significant bits each: the sum carries 24 bits,
// i.e. fp32 precision for normal numbers).  Products of an exact operand with the three
// terms, or the six term pairs (i + j <= 2) of two split operands, accumulated in fp32 on
// the tensor cores, reproduce the fp32 product to ~2^-24 relative.
template <int TERMS>
__device__ __forceinline__ void split_bf16(float x, uint16_t (&t)[TERMS]) {
  float r = x;
#pragma unroll
  for (int i = 0; i < TERMS; ++i) {
    const __nv_bfloat16 b = __float2bfloat16_rn(r);
    t[i] = __bfloat16_as_ushort(b);
    r = r - __bfloat162float(b);
  }
}

__device__ __forceinline__ uint32_t pack_bf16x2(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

// An mma operand fragment of REGS registers (v: its 2 * REGS fp32 values, pairs in register
// order) split into TERMS bf16 terms: out[t] is term t packed as mma_m16n8k16 takes it (A:
// REGS = 4, B: REGS = 2).
template <int TERMS, int REGS>
__device__ __forceinline__ void split_fragment(const float (&v)[2 * REGS], uint32_t (&out)[TERMS][REGS]) {
#pragma unroll
  for (int r = 0; r < REGS; ++r) {
    uint16_t lo[TERMS], hi[TERMS];
    split_bf16<TERMS>(v[2 * r], lo);
    split_bf16<TERMS>(v[2 * r + 1], hi);
#pragma unroll
    for (int t = 0; t < TERMS; ++t) out[t][r] = pack_bf16x2(lo[t], hi[t]);
  }
}

// acc[j] += row tile rt0 + j of H_m^T (exact in one bf16 term: A fragments [rt][ks][32 lanes] in
// `left`) times the lane's 8-column strip (element k read by load(k), split into 3 bf16 terms):
// the fp32-accurate H_m mix of one strip on the tensor cores, row tiles rt0 + j < mt = ceil(m / 16).
// kLeftShared: `left` points to shared memory (plain loads instead of __ldg).
template <int MT, bool kLeftShared = false, typename Load>
__device__ __forceinline__ void mix_strip_bf16(float (&acc)[MT][4], const uint4* left, int mt, Load&& load,
                                               int rt0 = 0) {
  constexpr int kTerms = 3;
  const int lane = threadIdx.x & 31, c = lane & 3;
  for (int ks = 0; ks < mt; ++ks) {
    const int k0 = ks * 16 + 2 * c;
    const float v[4] = {load(k0), load(k0 + 1), load(k0 + 8), load(k0 + 9)};
    uint32_t b[kTerms][2];
    split_fragment<kTerms, 2>(v, b);
#pragma unroll
    for (int j = 0; j < MT; ++j) {
      if (rt0 + j < mt) {
        const size_t at = static_cast<size_t>((rt0 + j) * mt + ks) * 32 + lane;
        const uint4 f = kLeftShared ? left[at] : __ldg(left + at);
        const uint32_t a[4] = {f.x, f.y, f.z, f.w};
#pragma unroll
        for (int t = 0; t < kTerms; ++t) mma_m16n8k16<__nv_bfloat16>(acc[j], a, b[t]);
      }
    }
  }
}

// D += A (16x8 tf32, row) * B (8x8 tf32, col), fp32 accumulate.  Fragments: a = {A[g][c],
// A[g+8][c], A[g][c+4], A[g+8][c+4]}, b = {B[c][g], B[c+4][g]}, d as in mma_m16n8k16 (common.cuh); each
// register one fp32 bit pattern of which the mma reads the top 19 bits.
__device__ __forceinline__ void mma_tf32_1688(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

}  // namespace modaq
