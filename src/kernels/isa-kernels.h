// The per-ISA halves of kernels.h, one table per instruction set (kernels-portable.cpp, kernels-avx2.cpp,
// kernels-avx512.cpp). Each entry is single-threaded and works on output rows [o0, o1); kernels.cpp
// picks a table and splits the rows over threads. Only plain declarations here: these files are
// compiled with ISA flags, so nothing inline may be shared with the rest of the library.
#pragma once
#include "kernels/kernels.h"

namespace peft::kernels {

// Rows of x quantized to int8 per group of 32 columns (M <= 16 rows, I a multiple of 32). Within a group
// the odd columns come first, then the even ones: q[m * I + 32 g + k] is column 32 g + 2 k + 1 for k < 16 and
// 32 g + 2 (k - 16) for k >= 16 (the low nibbles of 16 packed bytes are the odd columns), d[m * (I / 32) + g]
// the group's scale (column value = q * d).
struct Int8Rows {
  const int8_t * q;
  const float * d;
  int64_t M, I;
};

struct IsaKernels {
  const char * name;
  // y[m*O + o] for m < M <= 16 and o in [o0, o1)
  void (*gemm4)(const float * x, int64_t M, const Weight4 & w, float * y, int64_t o0, int64_t o1);
  void (*gemm8)(const float * x, int64_t M, const Weight8 & w, float * y, int64_t o0, int64_t o1);
  void (*gemmf)(const float * x, int64_t M, const WeightF32 & w, float * y, int64_t o0, int64_t o1);
  void (*gemm16)(const float * x, int64_t M, const Weight16 & w, float * y, int64_t o0, int64_t o1);
  // 4-bit weight times int8 activations (kernels.h, set_int8_activations): x as Int8Rows, the code as int8
  // `table` worth `tscale` each; nullptr where the ISA has none of its own (the dispatcher uses AVX2's)
  void (*gemm4q)(const Int8Rows & x, const Weight4 & w, const int8_t * table, float tscale, float * y, int64_t o0,
                 int64_t o1);
  void (*dequant4)(const Weight4 & w, int64_t o0, int64_t o1, float * out);
  void (*dequant8)(const Weight8 & w, int64_t o0, int64_t o1, float * out);
  void (*widen16)(const Weight16 & w, int64_t o0, int64_t o1, float * out);
  void (*axpy)(int64_t n, float a, const float * x, float * y);  // y += a x
  float (*block4)(const float * x, int64_t n, bool tail, const float * bounds, uint8_t * out);  // quantize_block4
};

extern const IsaKernels kPortableKernels;
#if defined(__x86_64__)
extern const IsaKernels kAvx2Kernels;
extern const IsaKernels kAvx512Kernels;
#endif

// 1/127 in float32: the int8 dequantization constant (bitsandbytes: `A * stats * 7.874015718698502e-3`,
// the Python float rounded to float32 by the float32 multiply).
constexpr float kInt8Scale = 7.874015718698502e-3f;

// Calls f(i, n, scale) for each piece [i, i + n) of row o that lies in one absmax block. (In an unnamed
// namespace: each ISA's file gets its own copy, compiled with its own flags, never merged by the linker.)
namespace {
template <class F> inline void for_each_block_piece(const Weight4 & w, int64_t o, F && f) {
  const int64_t row = o * w.I, end = row + w.I;
  for (int64_t e = row; e < end;) {
    const int64_t b = e / w.blocksize;
    const int64_t stop = (b + 1) * w.blocksize < end ? (b + 1) * w.blocksize : end;
    f(e - row, stop - e, w.absmax[b]);
    e = stop;
  }
}

// The 4-bit "whole chunks" layout both vector ISAs use: a chunk is L dwords of 8 nibbles (8L weights); a
// shuffle of the dwords shifted by 4j looks up nibble j of each, which is element 8k + (j ^ 1) of lane k
// (the low nibble of a byte is the odd element). Rows qualify when I is a multiple of 8 and at least a chunk
// and the blocksize a power of two >= 8 (the 8 weights of a lane lie in one block).
template <int64_t L> inline bool whole_chunks4(const Weight4 & w) {
  const int64_t bs = w.blocksize;
  return w.I % 8 == 0 && w.I >= 8 * L && bs >= 8 && (bs & (bs - 1)) == 0;
}

// x in that order, once per call: xp[((m * chunks + c) * 8 + j) * L + k] = x[m * I + c * 8L + 8k + (j ^ 1)]
// for the whole chunks of each row.
template <int64_t L> inline void permute_x_chunks(const float * x, int64_t M, int64_t I, float * xp) {
  const int64_t chunks = I / (8 * L);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < chunks; ++c) {
      const float * src = x + m * I + c * 8 * L;
      float * dst = xp + (m * chunks + c) * 8 * L;
      for (int j = 0; j < 8; ++j)
        for (int64_t k = 0; k < L; ++k) dst[j * L + k] = src[8 * k + (j ^ 1)];
    }
}

// One 16-bit float (bfloat16, or IEEE float16 if `half`) widened to float32, exactly.
inline float widen_one(uint16_t h, bool half) {
  uint32_t u;
  if (!half) {
    u = uint32_t(h) << 16;
  } else {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 31) {
      u = sign | 0x7f800000u | (man << 13);  // inf, NaN
    } else if (exp != 0) {
      u = sign | ((exp + 112) << 23) | (man << 13);
    } else {
      const float f = float(man) * 5.9604644775390625e-8f;  // subnormal: man * 2^-24 (exact)
      __builtin_memcpy(&u, &f, 4);
      u |= sign;
    }
  }
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// quantize_block4 in plain C++ that each ISA's file compiles (and vectorizes) with its own flags: IEEE
// multiplies, divisions and compares only, so every ISA gives the same codes
inline uint8_t bucket4(const float * bd, float q) {
  q = q < -1.0f ? -1.0f : (q > 1.0f ? 1.0f : q);
  int idx = 0;
  for (int j = 0; j < 15; ++j) idx += bd[j] < q;
  return static_cast<uint8_t>(idx);
}

inline float quantize_block4_impl(const float * __restrict x, int64_t n, bool tail, const float * bounds,
                                  uint8_t * __restrict out) {
  float bd[15];
  for (int j = 0; j < 15; ++j) bd[j] = bounds[j];
  // max |x| on the bits: without the sign, the integer order of floats is their order (a NaN's bits lie
  // above every number's: it wins, as in at::max)
  uint32_t top = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    __builtin_memcpy(&u, x + i, 4);
    u &= 0x7fffffffu;
    top = u > top ? u : top;
  }
  float am;
  __builtin_memcpy(&am, &top, 4);
  const float a = am > 1e-38f ? am : 1e-38f, r = 1.0f / a;
  if (tail) {
    for (int64_t i = 0; i < n; ++i) out[i] = bucket4(bd, x[i] / a);
    return a;
  }
  for (int64_t i = 0; i < n; ++i) out[i] = bucket4(bd, x[i] * r);
  return am;
}

}  // namespace

}  // namespace peft::kernels
