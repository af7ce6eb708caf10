// Portable C++ kernels (any CPU): the reference arithmetic of the vector versions, and the fallback.
#include "kernels/isa-kernels.h"

namespace peft::kernels {
namespace {

constexpr int kMaxM = 16;

int nibble(const uint8_t * packed, int64_t e) { return (e & 1) ? (packed[e >> 1] & 0xF) : (packed[e >> 1] >> 4); }

void gemm4(const float * x, int64_t M, const Weight4 & w, float * y, int64_t o0, int64_t o1) {
  const int64_t I = w.I;
  for (int64_t o = o0; o < o1; ++o) {
    float acc[kMaxM] = {};
    const int64_t row = o * I;
    for_each_block_piece(w, o, [&](int64_t i, int64_t n, float s) {
      for (int64_t k = i; k < i + n; ++k) {
        const float wv = w.code[nibble(w.packed, row + k)] * s;
        for (int64_t m = 0; m < M; ++m) acc[m] += wv * x[m * I + k];
      }
    });
    for (int64_t m = 0; m < M; ++m) y[m * w.O + o] = acc[m];
  }
}

// The per-row scale SCB[o] / 127 is factored out of the dot product: y = (sum CB * x) * (SCB * 1/127).
void gemm8(const float * x, int64_t M, const Weight8 & w, float * y, int64_t o0, int64_t o1) {
  const int64_t I = w.I;
  for (int64_t o = o0; o < o1; ++o) {
    float acc[kMaxM] = {};
    const int8_t * cb = w.CB + o * I;
    for (int64_t k = 0; k < I; ++k) {
      const float wv = float(cb[k]);
      for (int64_t m = 0; m < M; ++m) acc[m] += wv * x[m * I + k];
    }
    const float scale = w.SCB[o] * kInt8Scale;
    for (int64_t m = 0; m < M; ++m) y[m * w.O + o] = acc[m] * scale;
  }
}

void gemmf(const float * x, int64_t M, const WeightF32 & w, float * y, int64_t o0, int64_t o1) {
  const int64_t I = w.I;
  for (int64_t o = o0; o < o1; ++o) {
    float acc[kMaxM] = {};
    const float * wr = w.W + o * I;
    for (int64_t k = 0; k < I; ++k)
      for (int64_t m = 0; m < M; ++m) acc[m] += wr[k] * x[m * I + k];
    for (int64_t m = 0; m < M; ++m) y[m * w.O + o] = acc[m];
  }
}

void gemm16(const float * x, int64_t M, const Weight16 & w, float * y, int64_t o0, int64_t o1) {
  const int64_t I = w.I;
  for (int64_t o = o0; o < o1; ++o) {
    float acc[kMaxM] = {};
    const uint16_t * wr = w.W + o * I;
    for (int64_t k = 0; k < I; ++k) {
      const float wv = widen_one(wr[k], w.half);
      for (int64_t m = 0; m < M; ++m) acc[m] += wv * x[m * I + k];
    }
    for (int64_t m = 0; m < M; ++m) y[m * w.O + o] = acc[m];
  }
}

void widen16(const Weight16 & w, int64_t o0, int64_t o1, float * out) {
  const uint16_t * src = w.W + o0 * w.I;
  for (int64_t e = 0, n = (o1 - o0) * w.I; e < n; ++e) out[e] = widen_one(src[e], w.half);
}

// 4-bit times int8 activations, the reference: per group of 32 columns the integer dot product times the
// group's scale, per block of the weight those times absmax * tscale (Int8Rows' column order).
void gemm4q(const Int8Rows & x, const Weight4 & w, const int8_t * table, float tscale, float * y, int64_t o0, int64_t o1) {
  const int64_t groups = x.I / 32;
  const int shift = __builtin_ctzll(static_cast<unsigned long long>(w.blocksize));
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t * p = w.packed + o * x.I / 2;
    const int64_t row = o * x.I;
    for (int64_t m = 0; m < x.M; ++m) {
      const int8_t * q = x.q + m * x.I;
      float acc = 0.0f, part = 0.0f;
      int64_t cur = row >> shift;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t b = (row + 32 * g) >> shift;
        if (b != cur) {
          acc += part * (w.absmax[cur] * tscale);
          part = 0.0f;
          cur = b;
        }
        int32_t s = 0;
        for (int k = 0; k < 16; ++k) {
          const uint8_t byte = p[16 * g + k];
          s += int32_t(table[byte & 0xF]) * q[32 * g + k] + int32_t(table[byte >> 4]) * q[32 * g + 16 + k];
        }
        part += static_cast<float>(s) * x.d[m * groups + g];
      }
      y[m * w.O + o] = acc + part * (w.absmax[cur] * tscale);
    }
  }
}

void dequant4(const Weight4 & w, int64_t o0, int64_t o1, float * out) {
  for (int64_t o = o0; o < o1; ++o) {
    float * dst = out + (o - o0) * w.I;
    const int64_t row = o * w.I;
    for_each_block_piece(w, o, [&](int64_t i, int64_t n, float s) {
      for (int64_t k = i; k < i + n; ++k) dst[k] = w.code[nibble(w.packed, row + k)] * s;
    });
  }
}

void dequant8(const Weight8 & w, int64_t o0, int64_t o1, float * out) {
  for (int64_t o = o0; o < o1; ++o) {
    const int8_t * cb = w.CB + o * w.I;
    float * dst = out + (o - o0) * w.I;
    for (int64_t k = 0; k < w.I; ++k) dst[k] = float(cb[k]) * (w.SCB[o] * kInt8Scale);
  }
}

// y += a x: a plain loop that this file's flags vectorize (restrict: no aliasing check)
void add_scaled(int64_t n, float a, const float * __restrict x, float * __restrict y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace

namespace {
float block4(const float * x, int64_t n, bool tail, const float * bounds, uint8_t * out) {
  return quantize_block4_impl(x, n, tail, bounds, out);
}
}  // namespace

const IsaKernels kPortableKernels = {"portable", gemm4, gemm8, gemmf, gemm16, gemm4q,
                                          dequant4, dequant8, widen16, add_scaled, block4};

}  // namespace peft::kernels
