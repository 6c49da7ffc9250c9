// Device code of the shared-memory transform kernels: quantize_act_transform.cu (the Hadamard
// sizes quantize_act_hadamard.cu does not take) keeps each token as fp32 [n1][s] (s = n2
// padded) and runs the FWHT butterflies in the reference's order here; quantize_tokens, the
// per-token quantization of such a buffer, also serves quantize_act_kron.cu.
#pragma once

#include "quantize_act_common.cuh"

namespace modaq {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxTokens = 8;
constexpr size_t kMaxTokenBytes = 200 * 1024;


struct Params {
  const void* x;
  const float* smooth;  // [K] or null
  const float* signs;   // [K] or null
  const uint4* left;    // A fragments of H_m^T
  uint8_t* q;
  float* scale;
  int64_t M;
  int n1, n2, s, tokens;
  int token_stride;     // floats between two tokens in the buffer (n1 * s)
  bool vec;             // n2 % 8 == 0 and 16-byte aligned x / smooth / signs
  float stage2_scale;   // multiplies L^T Z (1 / sqrt(K) for Hadamard with m > 1)
  float final_scale;    // multiplies the values before quantization (1 / sqrt(K) when m = 1)
  float clip;           // activation clip ratio: the token's range is clip * absmax
};

__host__ __device__ inline int padded_stride(int n2) { return n2 + ((4 - n2) % 16 + 16) % 16; }

// fp32 buffer bytes of one token ([n1][padded n2])
inline size_t token_bytes(int n1, int n2) { return static_cast<size_t>(n1) * padded_stride(n2) * sizeof(float); }

// FWHT stages lo .. lo + nb - 1 (nb <= 4) of every row: each task holds the 2^nb values
// whose index differs only in those bits and applies the butterflies in increasing h.
__device__ void fwht_pass(float* buf, int rows, int p, int s, int lo, int nb) {
  const int cnt = 1 << nb, per_row = p >> nb;
  for (int task = threadIdx.x; task < rows * per_row; task += kThreads) {
    const int row = task / per_row, local = task - row * per_row;
    const int low = local & ((1 << lo) - 1), high = local >> lo;
    float* ptr = buf + row * s + ((high << (lo + nb)) | low);
    float v[16];
#pragma unroll
    for (int j = 0; j < 16; ++j)
      if (j < cnt) v[j] = ptr[j << lo];
#pragma unroll
    for (int st = 0; st < 4; ++st) {
      if (st < nb) {
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          if (!(j & (1 << st)) && j < cnt) {
            const float a = v[j], b = v[j + (1 << st)];
            v[j] = a + b;
            v[j + (1 << st)] = a - b;
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < 16; ++j)
      if (j < cnt) ptr[j << lo] = v[j];
  }
}

__device__ void fwht_rows(const Params& p, float* buf, int done) {
  int bits = 0;
  while ((1 << bits) < p.n2) ++bits;
  for (int lo = done; lo < bits; lo += 4) {
    fwht_pass(buf, p.tokens * p.n1, p.n2, p.s, lo, min(4, bits - lo));
    __syncthreads();
  }
}

// ------------------------------------------------------------------ quantization

template <typename P>
__device__ __forceinline__ float value_at(const P& p, const float* tok_buf, int k) {
  const int b = k / p.n2;
  return tok_buf[b * p.s + (k - b * p.n2)] * p.final_scale;
}

// Quantize tokens row0 .. row0 + p.tokens - 1 (those < p.M) from buf: token t's values at
// buf + t * p.token_stride, laid out [n1][p.s]; amax_bits / nan_flag per token.  P is any
// parameter struct with these fields (Params, the Kronecker kernel's KronParams).
template <int BITS, typename P>
__device__ void quantize_tokens(const P& p, const float* buf, int64_t row0, const unsigned* amax_bits,
                                const int* nan_flag) {
  static_assert(kThreads == 256, "the loops below stride by 256 threads");
  constexpr int qmax = BITS == 8 ? 127 : 7;
  const int K = p.n1 * p.n2;
  const int t = static_cast<int>(threadIdx.x);
  if (t < p.tokens && row0 + t < p.M)
    p.scale[row0 + t] = token_scale(clipped_range(__uint_as_float(amax_bits[t]), p.clip), nan_flag[t], qmax);
  const bool vec8 = (p.n2 & 7) == 0;  // 8 consecutive k stay in one row of the buffer
  for (int tok = 0; tok < p.tokens && row0 + tok < p.M; ++tok) {
    const float inv = inv_scale(clipped_range(__uint_as_float(amax_bits[tok]), p.clip), nan_flag[tok], qmax);
    const float* tb = buf + static_cast<size_t>(tok) * p.token_stride;
    auto load8 = [&](int k, float (&f)[8]) {
      const int b = k / p.n2;
      const float4* src = reinterpret_cast<const float4*>(tb + b * p.s + (k - b * p.n2));
      const float4 u = src[0], w = src[1];
      f[0] = u.x * p.final_scale; f[1] = u.y * p.final_scale; f[2] = u.z * p.final_scale; f[3] = u.w * p.final_scale;
      f[4] = w.x * p.final_scale; f[5] = w.y * p.final_scale; f[6] = w.z * p.final_scale; f[7] = w.w * p.final_scale;
    };
    if (BITS == 8) {
      int8_t* out = reinterpret_cast<int8_t*>(p.q) + (row0 + tok) * K;
      if (vec8) {
        for (int k = t * 8; k < K; k += kThreads * 8) {
          float f[8];
          load8(k, f);
          *reinterpret_cast<uint2*>(out + k) = quantize8(f, inv, qmax);
        }
      } else {
        for (int k = t; k < K; k += kThreads)
          out[k] = static_cast<int8_t>(quantize_one(value_at(p, tb, k), inv, qmax));
      }
    } else {
      uint8_t* out = p.q + (row0 + tok) * (K / 2);
      const bool vec_pairs = vec8 && (K & 15) == 0;
      const int full = vec_pairs ? (K >> 7) : 0;
      for (int ch = t; ch < full * 8; ch += kThreads) {
        const int lo_k = (ch >> 3) * 128 + (ch & 7) * 8;
        float lo[8], hi[8];
        load8(lo_k, lo);
        load8(lo_k + 64, hi);
        uint32_t w[2] = {0u, 0u};
#pragma unroll
        for (int j = 0; j < 8; ++j)
          w[j >> 2] |= static_cast<uint32_t>(pack_nibbles(quantize_one(lo[j], inv, qmax), quantize_one(hi[j], inv, qmax))) << (8 * (j & 3));
        *reinterpret_cast<uint2*>(out + (ch >> 3) * 64 + (ch & 7) * 8) = make_uint2(w[0], w[1]);
      }
      for (int j = full * 64 + t; j < K / 2; j += kThreads) {
        int lo, hi;
        paired_indices(j, K, lo, hi);
        out[j] = pack_nibbles(quantize_one(value_at(p, tb, lo), inv, qmax), quantize_one(value_at(p, tb, hi), inv, qmax));
      }
    }
  }
}

}  // namespace
}  // namespace modaq
