// AVX2+FMA(+F16C) kernels. 4-bit, rows of whole 64-column chunks: two shuffles and a blend per 8 weights
// (row4_chunks: x permuted to the nibbles' order once per call, block scales applied per chunk). Otherwise
// (and for more than 4 rows of x): 16 packed bytes -> 32 nibbles in element order (shift, unpack),
// zero-extended to int32 8 at a time; the 16-entry code table is two ymm halves, looked up with two
// permutevar8x32 and a blend on bit 3. Pieces of a block that are not a multiple of 32 (int8: rows) end in
// scalar code. At most 8 rows of x at a time (16 ymm registers). Float weights (float32, bfloat16,
// float16): several output rows at a time. Compiled with -mavx2 -mfma -mf16c (src/CMakeLists.txt); only
// called after a CPU check.
#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/isa-kernels.h"

namespace peft::kernels {
namespace {

constexpr int kGroup = 8;  // rows of x per pass

inline int nibble(const uint8_t * packed, int64_t e) { return (e & 1) ? (packed[e >> 1] & 0xF) : (packed[e >> 1] >> 4); }

struct Table {
  __m256 lo, hi;  // code[0..7], code[8..15]
};

// 8 nibble bytes (bits 0..3 valid) -> 8 weights: permutevar8x32 reads bits 0..2, bit 3 picks the half.
inline __m256 lookup8(__m128i nib, const Table & t, __m256 scale) {
  const __m256i idx = _mm256_cvtepu8_epi32(nib);
  const __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.lo, idx), _mm256_permutevar8x32_ps(t.hi, idx),
                                    _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  return _mm256_mul_ps(v, scale);
}

// 32 weights from 16 packed bytes, in element order (the high nibble of byte k is element 2k).
inline void decode32(const uint8_t * p, const Table & t, __m256 scale, __m256 w[4]) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
  const __m128i sh = _mm_srli_epi16(b, 4);
  const __m128i lo = _mm_unpacklo_epi8(sh, b), hi = _mm_unpackhi_epi8(sh, b);
  w[0] = lookup8(lo, t, scale);
  w[1] = lookup8(_mm_srli_si128(lo, 8), t, scale);
  w[2] = lookup8(hi, t, scale);
  w[3] = lookup8(_mm_srli_si128(hi, 8), t, scale);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int M> void row4(const float * x, const Weight4 & w, const Table & t, int64_t o, float * y) {
  const int64_t I = w.I;
  __m256 acc[2][M];
  float tail[M] = {};
  for (int m = 0; m < M; ++m) acc[0][m] = acc[1][m] = _mm256_setzero_ps();
  const int64_t row = o * I;
  for_each_block_piece(w, o, [&](int64_t i, int64_t n, float s) {
    const __m256 scale = _mm256_set1_ps(s);
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
      __m256 wv[4];
      decode32(w.packed + (row + i + k) / 2, t, scale, wv);
      for (int m = 0; m < M; ++m) {
        const float * xm = x + m * I + i + k;
        acc[0][m] = _mm256_fmadd_ps(wv[0], _mm256_loadu_ps(xm), acc[0][m]);
        acc[1][m] = _mm256_fmadd_ps(wv[1], _mm256_loadu_ps(xm + 8), acc[1][m]);
        acc[0][m] = _mm256_fmadd_ps(wv[2], _mm256_loadu_ps(xm + 16), acc[0][m]);
        acc[1][m] = _mm256_fmadd_ps(wv[3], _mm256_loadu_ps(xm + 24), acc[1][m]);
      }
    }
    for (; k < n; ++k) {
      const float wv = w.code[nibble(w.packed, row + i + k)] * s;
      for (int m = 0; m < M; ++m) tail[m] += wv * x[m * I + i + k];
    }
  });
  for (int m = 0; m < M; ++m) y[m * w.O + o] = hsum(_mm256_add_ps(acc[0][m], acc[1][m])) + tail[m];
}

inline __m256 int8_to_float(const int8_t * p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p))));
}

// The per-row scale SCB[o] / 127 is factored out of the dot product: y = (sum CB * x) * (SCB * 1/127).
template <int M> void row8(const float * x, const Weight8 & w, int64_t o, float * y) {
  const int64_t I = w.I;
  __m256 acc[2][M];
  float tail[M] = {};
  for (int m = 0; m < M; ++m) acc[0][m] = acc[1][m] = _mm256_setzero_ps();
  const int8_t * cb = w.CB + o * I;
  int64_t k = 0;
  for (; k + 16 <= I; k += 16) {
    const __m256 w0 = int8_to_float(cb + k), w1 = int8_to_float(cb + k + 8);
    for (int m = 0; m < M; ++m) {
      acc[0][m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * I + k), acc[0][m]);
      acc[1][m] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * I + k + 8), acc[1][m]);
    }
  }
  for (; k < I; ++k)
    for (int m = 0; m < M; ++m) tail[m] += float(cb[k]) * x[m * I + k];
  const float scale = w.SCB[o] * kInt8Scale;
  for (int m = 0; m < M; ++m) y[m * w.O + o] = (hsum(_mm256_add_ps(acc[0][m], acc[1][m])) + tail[m]) * scale;
}

// The fast 4-bit path (as AVX-512's), for rows whose columns come in whole chunks of 64 (I a multiple of 8,
// blocksize a power of two >= 8): 32 bytes hold 8 dwords of 8 nibbles. permutevar8x32 reads only bits 0..2
// of each index and blendv only the sign bit, so the dwords shifted right by 4j (the index) and left by
// 28 - 4j (bit 3 of the nibble into the sign) look up nibble j of every dword: two shuffles and a blend
// per 8 weights, no widening of bytes. Lane k of lookup j is element 8k + (j ^ 1) of the chunk (the low
// nibble of a byte is the odd element), so x is permuted once per call into that order (xp). The 8
// weights of a lane lie in one block: the chunk's block scales are one vector, c = sum_j w_j * xp_j,
// acc += c * s.
constexpr int64_t kChunk = 64;
constexpr int64_t kPrefetchAhead = 1024;  // bytes of packed 4-bit weights
constexpr int kFastRows = 4;              // rows of x the fast path takes (registers: 2 per row)

bool fast4(const Weight4 & w) { return whole_chunks4<8>(w); }
void permute_x(const float * x, int64_t M, int64_t I, float * xp) { permute_x_chunks<8>(x, M, I, xp); }

template <int M>
void row4_chunks(const float * xp, int64_t chunks, const Weight4 & w, const Table & t, int64_t o, int64_t c0, int64_t c1,
                 bool add, float * y) {
  constexpr int A = M == 1 ? 2 : 1;  // partial sums per row: with one row, two chains of FMAs
  const int64_t bs = w.blocksize;
  const int shift = __builtin_ctzll(static_cast<unsigned long long>(bs));
  const __m256i lane8 = _mm256_setr_epi32(0, 8, 16, 24, 32, 40, 48, 56);
  __m256 acc[M];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
  const uint8_t * p = w.packed + o * w.I / 2;
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t f = o * w.I + c * kChunk, b0 = f >> shift, off = f & (bs - 1);
    __m256 s;
    if (off + kChunk <= bs) {
      s = _mm256_set1_ps(w.absmax[b0]);
    } else {  // blocks of 8..32 weights, or a chunk across a block boundary: a scale per lane
      const __m256i idx = _mm256_srli_epi32(_mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(off)), lane8), shift);
      s = _mm256_i32gather_ps(w.absmax + b0, idx, 4);
    }
    _mm_prefetch(reinterpret_cast<const char *>(p + c * (kChunk / 2) + kPrefetchAhead), _MM_HINT_T0);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p + c * (kChunk / 2)));
    __m256 part[A][M];
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const __m256i idx = _mm256_srli_epi32(v, 4 * j);
      const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(v, 28 - 4 * j));
      const __m256 wj =
          _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.lo, idx), _mm256_permutevar8x32_ps(t.hi, idx), sel);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const __m256 xj = _mm256_loadu_ps(xp + ((m * chunks + c) * 8 + j) * 8);
        __m256 & pa = part[j % A][m];
        pa = j < A ? _mm256_mul_ps(wj, xj) : _mm256_fmadd_ps(wj, xj, pa);
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[m] = _mm256_fmadd_ps(A == 2 ? _mm256_add_ps(part[0][m], part[A - 1][m]) : part[0][m], s, acc[m]);
  }
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) {
    const float sum = hsum(acc[m]);
    y[m * w.O + o] = add ? y[m * w.O + o] + sum : sum;
  }
}

// What row4 adds for columns [c, I) of row o (the columns after the whole chunks), into y.
template <int M> void row4_rest(const float * x, const Weight4 & w, const Table & t, int64_t o, int64_t c, float * y) {
  float part[M];
  for (int m = 0; m < M; ++m) part[m] = 0.0f;
  const int64_t row = o * w.I;
  for (int64_t k = c; k < w.I; ++k) {
    const float wv = w.code[nibble(w.packed, row + k)] * w.absmax[(row + k) / w.blocksize];
    for (int m = 0; m < M; ++m) part[m] += wv * x[m * w.I + k];
  }
  for (int m = 0; m < M; ++m) y[m * w.O + o] += part[m];
}

template <int M> void rows4(const float * x, const Weight4 & w, float * y, int64_t o0, int64_t o1) {
  const Table t = {_mm256_loadu_ps(w.code), _mm256_loadu_ps(w.code + 8)};
  if (M <= kFastRows && fast4(w)) {
    const int64_t chunks = w.I / kChunk;
    thread_local std::vector<float> buffer;
    if (buffer.size() < static_cast<size_t>(M * chunks * kChunk)) buffer.resize(M * chunks * kChunk);
    permute_x(x, M, w.I, buffer.data());
    // panels of chunks so that M * panel columns of xp stay in L1
    const int64_t per = M == 1 ? chunks : std::max<int64_t>(1, (4096 / M) / kChunk);
    for (int64_t c0 = 0; c0 < chunks; c0 += per) {
      const int64_t c1 = chunks - c0 < per ? chunks : c0 + per;
      for (int64_t o = o0; o < o1; ++o) row4_chunks<M>(buffer.data(), chunks, w, t, o, c0, c1, c0 > 0, y);
    }
    if (chunks * kChunk < w.I)
      for (int64_t o = o0; o < o1; ++o) row4_rest<M>(x, w, t, o, chunks * kChunk, y);
    return;
  }
  for (int64_t o = o0; o < o1; ++o) row4<M>(x, w, t, o, y);
}

template <int M> void rows8(const float * x, const Weight8 & w, float * y, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) row8<M>(x, w, o, y);
}

// Float (float32, bfloat16, float16) weights: R output rows at a time (each x load feeds R FMAs), R * M
// accumulators in registers (R * M + R + 1 <= 16 ymm). 16-bit weights are widened in registers (bfloat16:
// zero-extend and shift; float16: F16C). Tails of rows in scalar code.
template <int M> constexpr int rows_at_once() { return M <= 3 ? 3 : M <= 6 ? 2 : 1; }

struct F32Src {
  using T = float;
  static __m256 load8(const float * p) { return _mm256_loadu_ps(p); }
  static float one(float v) { return v; }
};
struct BF16Src {
  using T = uint16_t;
  static __m256 load8(const uint16_t * p) {
    const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
  }
  static float one(uint16_t v) { return widen_one(v, false); }
};
struct F16Src {
  using T = uint16_t;
  static __m256 load8(const uint16_t * p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p))); }
  static float one(uint16_t v) { return widen_one(v, true); }
};

template <int M, int R, class S> void blockf(const float * x, const typename S::T * W, int64_t O, int64_t I, int64_t o, float * y) {
  __m256 acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
  const typename S::T * wr = W + o * I;
  int64_t k = 0;
  for (; k + 8 <= I; k += 8) {
    __m256 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) wv[r] = S::load8(wr + r * I + k);
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * I + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][m] = _mm256_fmadd_ps(wv[r], xv, acc[r][m]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      float sum = hsum(acc[r][m]);
      for (int64_t t = k; t < I; ++t) sum += S::one(wr[r * I + t]) * x[m * I + t];
      y[m * O + o + r] = sum;
    }
}

template <int M, class S> void rowsf(const float * x, const typename S::T * W, int64_t O, int64_t I, float * y, int64_t o0, int64_t o1) {
  constexpr int R = rows_at_once<M>();
  int64_t o = o0;
  for (; o + R <= o1; o += R) blockf<M, R, S>(x, W, O, I, o, y);
  for (; o < o1; ++o) blockf<M, 1, S>(x, W, O, I, o, y);
}

// 4-bit times int8 activations (kernels.h, set_int8_activations): the 16 packed bytes of a group broadcast to
// both halves, the low half shifted by 0 and the high one by 4, masked to nibbles: the low nibbles (odd
// columns) then the high ones (even columns), Int8Rows' order. pshufb looks the int8 code up; |w| times x
// with w's sign (maddubs, as llama.cpp's Q4_0 x Q8_0 on AVX2), pairs summed to int32 (madd), to float,
// times the group's scale into the block's partial sum; per block, times absmax * tscale.
template <int M>
void rows4q(const Int8Rows & x, const Weight4 & w, const int8_t * table, float tscale, float * y, int64_t o0, int64_t o1) {
  const int64_t I = x.I, groups = I / 32;
  const int shift = __builtin_ctzll(static_cast<unsigned long long>(w.blocksize));
  const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i *>(table)));
  const __m256i counts = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4), low4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t * p = w.packed + o * I / 2;
    const int64_t row = o * I;
    __m256 acc[M], part[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[m] = part[m] = _mm256_setzero_ps();
    int64_t cur = row >> shift;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t b = (row + 32 * g) >> shift;
      if (b != cur) {
        const __m256 s = _mm256_set1_ps(w.absmax[cur] * tscale);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          acc[m] = _mm256_fmadd_ps(part[m], s, acc[m]);
          part[m] = _mm256_setzero_ps();
        }
        cur = b;
      }
      _mm_prefetch(reinterpret_cast<const char *>(p + 16 * g + kPrefetchAhead), _MM_HINT_T0);
      const __m256i bytes = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p + 16 * g)));
      const __m256i wq = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srlv_epi32(bytes, counts), low4));
      const __m256i aw = _mm256_abs_epi8(wq);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.q + m * I + 32 * g));
        const __m256i s32 = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wq)), ones);
        part[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), _mm256_set1_ps(x.d[m * groups + g]), part[m]);
      }
    }
    const __m256 s = _mm256_set1_ps(w.absmax[cur] * tscale);
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) y[m * w.O + o] = hsum(_mm256_fmadd_ps(part[m], s, acc[m]));
  }
}

using Rows4q = void (*)(const Int8Rows &, const Weight4 &, const int8_t *, float, float *, int64_t, int64_t);
const Rows4q kRows4q[4] = {rows4q<1>, rows4q<2>, rows4q<3>, rows4q<4>};

// rows of x 4 at a time (2 ymm registers per row)
void gemm4q(const Int8Rows & x, const Weight4 & w, const int8_t * table, float tscale, float * y, int64_t o0, int64_t o1) {
  const int64_t groups = x.I / 32;
  for (int64_t m0 = 0; m0 < x.M; m0 += 4) {
    const int64_t n = x.M - m0 < 4 ? x.M - m0 : 4;
    const Int8Rows part{x.q + m0 * x.I, x.d + m0 * groups, n, x.I};
    kRows4q[n - 1](part, w, table, tscale, y + m0 * w.O, o0, o1);
  }
}

using Rows4 = void (*)(const float *, const Weight4 &, float *, int64_t, int64_t);
using Rows8 = void (*)(const float *, const Weight8 &, float *, int64_t, int64_t);
const Rows4 kRows4[kGroup] = {rows4<1>, rows4<2>, rows4<3>, rows4<4>, rows4<5>, rows4<6>, rows4<7>, rows4<8>};
const Rows8 kRows8[kGroup] = {rows8<1>, rows8<2>, rows8<3>, rows8<4>, rows8<5>, rows8<6>, rows8<7>, rows8<8>};
template <class S> using RowsF = void (*)(const float *, const typename S::T *, int64_t, int64_t, float *, int64_t, int64_t);
template <class S> constexpr RowsF<S> kRowsF[kGroup] = {rowsf<1, S>, rowsf<2, S>, rowsf<3, S>, rowsf<4, S>,
                                                         rowsf<5, S>, rowsf<6, S>, rowsf<7, S>, rowsf<8, S>};

void gemm4(const float * x, int64_t M, const Weight4 & w, float * y, int64_t o0, int64_t o1) {
  for (int64_t m0 = 0; m0 < M; m0 += kGroup)
    kRows4[(M - m0 < kGroup ? M - m0 : kGroup) - 1](x + m0 * w.I, w, y + m0 * w.O, o0, o1);
}

void gemm8(const float * x, int64_t M, const Weight8 & w, float * y, int64_t o0, int64_t o1) {
  for (int64_t m0 = 0; m0 < M; m0 += kGroup)
    kRows8[(M - m0 < kGroup ? M - m0 : kGroup) - 1](x + m0 * w.I, w, y + m0 * w.O, o0, o1);
}

template <class S> void gemm_float(const float * x, int64_t M, const typename S::T * W, int64_t O, int64_t I, float * y,
                                   int64_t o0, int64_t o1) {
  for (int64_t m0 = 0; m0 < M; m0 += kGroup)
    kRowsF<S>[(M - m0 < kGroup ? M - m0 : kGroup) - 1](x + m0 * I, W, O, I, y + m0 * O, o0, o1);
}

void gemmf(const float * x, int64_t M, const WeightF32 & w, float * y, int64_t o0, int64_t o1) {
  gemm_float<F32Src>(x, M, w.W, w.O, w.I, y, o0, o1);
}

void gemm16(const float * x, int64_t M, const Weight16 & w, float * y, int64_t o0, int64_t o1) {
  if (w.half) gemm_float<F16Src>(x, M, w.W, w.O, w.I, y, o0, o1);
  else gemm_float<BF16Src>(x, M, w.W, w.O, w.I, y, o0, o1);
}

template <class S> void widen_rows(const uint16_t * src, int64_t n, float * out) {
  int64_t e = 0;
  for (; e + 8 <= n; e += 8) _mm256_storeu_ps(out + e, S::load8(src + e));
  for (; e < n; ++e) out[e] = S::one(src[e]);
}

void widen16(const Weight16 & w, int64_t o0, int64_t o1, float * out) {
  const uint16_t * src = w.W + o0 * w.I;
  if (w.half) widen_rows<F16Src>(src, (o1 - o0) * w.I, out);
  else widen_rows<BF16Src>(src, (o1 - o0) * w.I, out);
}

void dequant4(const Weight4 & w, int64_t o0, int64_t o1, float * out) {
  const Table t = {_mm256_loadu_ps(w.code), _mm256_loadu_ps(w.code + 8)};
  for (int64_t o = o0; o < o1; ++o) {
    const int64_t row = o * w.I;
    float * dst = out + (o - o0) * w.I;
    for_each_block_piece(w, o, [&](int64_t i, int64_t n, float s) {
      const __m256 scale = _mm256_set1_ps(s);
      int64_t k = 0;
      for (; k + 32 <= n; k += 32) {
        __m256 wv[4];
        decode32(w.packed + (row + i + k) / 2, t, scale, wv);
        for (int j = 0; j < 4; ++j) _mm256_storeu_ps(dst + i + k + 8 * j, wv[j]);
      }
      for (; k < n; ++k) dst[i + k] = w.code[nibble(w.packed, row + i + k)] * s;
    });
  }
}

// float(CB) * (SCB * (1/127)), as bitsandbytes' CPU path (MatMul8bitFp) forms the weight.
void dequant8(const Weight8 & w, int64_t o0, int64_t o1, float * out) {
  for (int64_t o = o0; o < o1; ++o) {
    const int8_t * cb = w.CB + o * w.I;
    float * dst = out + (o - o0) * w.I;
    const __m256 s = _mm256_set1_ps(w.SCB[o] * kInt8Scale);
    int64_t k = 0;
    for (; k + 8 <= w.I; k += 8) _mm256_storeu_ps(dst + k, _mm256_mul_ps(int8_to_float(cb + k), s));
    for (; k < w.I; ++k) dst[k] = float(cb[k]) * (w.SCB[o] * kInt8Scale);
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

const IsaKernels kAvx2Kernels = {"avx2", gemm4, gemm8, gemmf, gemm16, gemm4q,
                                      dequant4, dequant8, widen16, add_scaled, block4};

}  // namespace peft::kernels
#endif
