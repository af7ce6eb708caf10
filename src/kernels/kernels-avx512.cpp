// AVX-512 (F+BW+VL+DQ) kernels. 4-bit, rows of whole 128-column chunks: one shuffle per 16 weights
// (row4_chunks: x permuted to the nibbles' order once per call). Otherwise: 16 packed bytes -> 32 nibbles
// in element order (shift, unpack),
// zero-extended to int32 and looked up in the 16-entry code table held in one zmm (permutexvar), times the
// block's absmax, FMA into one accumulator per row of x. Block pieces that are not a multiple of 16 use
// masked loads. Compiled with -mavx512f/bw/vl/dq (src/CMakeLists.txt); only called after a CPU check.
#if defined(__x86_64__)
// GCC 12 warns about the _mm512_undefined_* inside its own intrinsics (GCC bug 105593)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/isa-kernels.h"

namespace peft::kernels {
namespace {

inline __mmask16 first(int64_t n) { return __mmask16((1u << n) - 1); }  // n <= 16

// Nibble bytes of 16 packed bytes in element order: the high nibble of byte k is element 2k. Bits 4..7
// of each result byte are garbage (the 16-bit shift carries them in); permutexvar only reads bits 0..3.
inline __m128i nibbles_lo(__m128i b) { return _mm_unpacklo_epi8(_mm_srli_epi16(b, 4), b); }
inline __m128i nibbles_hi(__m128i b) { return _mm_unpackhi_epi8(_mm_srli_epi16(b, 4), b); }

inline __m512 lookup(__m128i nib, __m512 table, __m512 scale) {
  return _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(nib), table), scale);
}

// The first n (even, <= 16) weights at p, the rest zero.
inline __m512 decode_partial(const uint8_t * p, int64_t n, __m512 table, __m512 scale) {
  const __m128i b = _mm_maskz_loadu_epi8(first(n / 2), p);
  return _mm512_maskz_mul_ps(first(n), _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(nibbles_lo(b)), table), scale);
}

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// The absmax of columns [i, i + n) of row `row` (n <= 32), for chunks that straddle a block boundary.
inline void mixed_scales(const Weight4 & w, int64_t row, int64_t i, int64_t n, __m512 & s0, __m512 & s1) {
  alignas(64) float s[32] = {};
  for (int64_t k = 0; k < n; ++k) s[k] = w.absmax[(row + i + k) / w.blocksize];
  s0 = _mm512_load_ps(s);
  s1 = _mm512_load_ps(s + 16);
}

// One output row o for M rows of x, in chunks of 32 columns: runs of whole chunks inside one block take
// the fast loop, the rest (chunks across a block boundary, the end of a row) a masked one. With few rows
// two accumulator sets hide the FMA latency. The loops over rows are unrolled before GCC's scalar
// replacement (pragma), so that the accumulators stay in registers.
template <int M>
void row4(const float * x, const Weight4 & w, __m512 table, int64_t o, int64_t c0, int64_t c1, bool add, float * y) {
  constexpr int A = M <= 8 ? 2 : 1;
  const int64_t I = w.I, row = o * I;
  __m512 acc[A][M];
#pragma GCC unroll 16
  for (int a = 0; a < A; ++a)
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[a][m] = _mm512_setzero_ps();
  const uint8_t * p = w.packed + row / 2;
  int64_t b = (row + c0) / w.blocksize, next = (b + 1) * w.blocksize - row;  // block of column i, where it ends
  for (int64_t i = c0; i < c1;) {
    while (i >= next) ++b, next += w.blocksize;
    const int64_t stop = next < c1 ? next : c1;
    if (i + 32 <= stop) {
      const __m512 scale = _mm512_set1_ps(w.absmax[b]);
      for (; i + 32 <= stop; i += 32) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p + i / 2));
        const __m512 w0 = lookup(nibbles_lo(bytes), table, scale), w1 = lookup(nibbles_hi(bytes), table, scale);
#pragma GCC unroll 16
        for (int m = 0; m < M; ++m) {
          acc[0][m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + m * I + i), acc[0][m]);
          acc[A - 1][m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + m * I + i + 16), acc[A - 1][m]);
        }
      }
      continue;
    }
    const int64_t n = c1 - i < 32 ? c1 - i : 32;
    __m512 s0, s1;
    mixed_scales(w, row, i, n, s0, s1);
    const __mmask16 k0 = first(n < 16 ? n : 16), k1 = first(n > 16 ? n - 16 : 0);
    const __m128i bytes = _mm_maskz_loadu_epi8(first((n + 1) / 2), p + i / 2);
    const __m512 w0 = _mm512_maskz_mul_ps(k0, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(nibbles_lo(bytes)), table), s0);
    const __m512 w1 = _mm512_maskz_mul_ps(k1, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(nibbles_hi(bytes)), table), s1);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      acc[0][m] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(k0, x + m * I + i), acc[0][m]);
      acc[A - 1][m] = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(k1, x + m * I + i + 16), acc[A - 1][m]);
    }
    i += n;
  }
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
    const float sum = hsum(A == 2 ? _mm512_add_ps(acc[0][m], acc[A - 1][m]) : acc[0][m]);
    y[m * w.O + o] = add ? y[m * w.O + o] + sum : sum;
  }
}

inline __m512 int8_to_float(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }

// The per-row scale SCB[o] / 127 is factored out of the dot product (of each panel of columns):
// y = (sum CB * x) * (SCB * 1/127).
template <int M> void row8(const float * x, const Weight8 & w, int64_t o, int64_t c0, int64_t c1, bool add, float * y) {
  constexpr int A = M <= 8 ? 2 : 1;
  const int64_t I = w.I;
  __m512 acc[A][M];
#pragma GCC unroll 16
  for (int a = 0; a < A; ++a)
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[a][m] = _mm512_setzero_ps();
  const int8_t * cb = w.CB + o * I;
  int64_t k = c0;
  for (; k + 32 <= c1; k += 32) {
    const __m512 w0 = int8_to_float(_mm_loadu_si128(reinterpret_cast<const __m128i *>(cb + k)));
    const __m512 w1 = int8_to_float(_mm_loadu_si128(reinterpret_cast<const __m128i *>(cb + k + 16)));
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      acc[0][m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + m * I + k), acc[0][m]);
      acc[A - 1][m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + m * I + k + 16), acc[A - 1][m]);
    }
  }
  for (; k < c1; k += 16) {
    const __mmask16 mask = first(c1 - k < 16 ? c1 - k : 16);
    const __m512 w0 = int8_to_float(_mm_maskz_loadu_epi8(mask, cb + k));
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[0][m] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mask, x + m * I + k), acc[0][m]);
  }
  const float scale = w.SCB[o] * kInt8Scale;
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
    const float sum = hsum(A == 2 ? _mm512_add_ps(acc[0][m], acc[A - 1][m]) : acc[0][m]) * scale;
    y[m * w.O + o] = add ? y[m * w.O + o] + sum : sum;
  }
}

// Columns in panels of M * panel <= 16 KB of x, so that x stays in L1 while the panel goes over all rows.
constexpr int64_t panel_columns(int M) { return M == 1 ? INT64_MAX : (4096 / M) / 32 * 32; }

// The fast 4-bit path, for rows whose columns come in whole chunks of 128 (I a multiple of 8, blocksize a
// power of two >= 16). 64 bytes hold 16 dwords of 8 nibbles; permutexvar reads only bits 0..3 of each
// index, so shifting the dwords right by 4j (j = 0..7) looks up nibble j of every dword: one shuffle per
// 16 weights. Lane k of lookup j is element 8k + (j ^ 1) of the chunk (the low nibble of a byte is the odd
// element), so x is permuted once per call into that order (xp) instead of the weights. The 8 weights of a
// lane lie in one block, so the chunk's block scales are one vector: c = sum_j w_j * xp_j, acc += c * s.
constexpr int64_t kChunk = 128;
constexpr int64_t kPrefetchAhead = 2048;  // bytes of packed 4-bit weights

// (blocksize >= 16 here: a chunk of 128 then spans at most 16 blocks, whose scales row4_chunks loads as one vector)
bool fast4(const Weight4 & w) { return whole_chunks4<16>(w) && w.blocksize >= 16; }
void permute_x(const float * x, int64_t M, int64_t I, float * xp) { permute_x_chunks<16>(x, M, I, xp); }

template <int M>
void row4_chunks(const float * xp, int64_t chunks, const Weight4 & w, __m512 table, int64_t o, int64_t c0, int64_t c1,
                 bool add, float * y) {
  const int64_t bs = w.blocksize, blocks = (w.O * w.I + bs - 1) / bs;
  const int shift = __builtin_ctzll(static_cast<unsigned long long>(bs));
  const __m512i lane8 = _mm512_setr_epi32(0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120);
  __m512 acc[M];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
  const uint8_t * p = w.packed + o * w.I / 2;
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t f = o * w.I + c * kChunk, b0 = f >> shift, off = f & (bs - 1);
    __m512 s;
    if (off + kChunk <= bs) {
      s = _mm512_set1_ps(w.absmax[b0]);
    } else {
      const int64_t n = blocks - b0 < 16 ? blocks - b0 : 16;
      const __m512 a = _mm512_maskz_loadu_ps(first(n), w.absmax + b0);
      const __m512i idx = _mm512_srli_epi32(_mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(off)), lane8), shift);
      s = _mm512_permutexvar_ps(idx, a);
    }
    // the packed bytes 2 KB ahead (8 rows of I = 512): a weight streamed from memory (decode) had the
    // hardware prefetcher alone keep ~14 GB/s of a ~16 GB/s machine busy (bench_quant_kernels avx512 cold)
    _mm_prefetch(reinterpret_cast<const char *>(p + c * (kChunk / 2) + kPrefetchAhead), _MM_HINT_T0);
    __m512i v = _mm512_loadu_si512(p + c * (kChunk / 2));
    __m512 part[M];
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const __m512 wj = _mm512_permutexvar_ps(v, table);
      v = _mm512_srli_epi32(v, 4);
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m) {
        const __m512 xj = _mm512_loadu_ps(xp + ((m * chunks + c) * 8 + j) * 16);
        part[m] = j == 0 ? _mm512_mul_ps(wj, xj) : _mm512_fmadd_ps(wj, xj, part[m]);
      }
    }
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[m] = _mm512_fmadd_ps(part[m], s, acc[m]);
  }
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
    const float sum = hsum(acc[m]);
    y[m * w.O + o] = add ? y[m * w.O + o] + sum : sum;
  }
}

template <int M> void rows4(const float * x, const Weight4 & w, float * y, int64_t o0, int64_t o1) {
  const __m512 table = _mm512_loadu_ps(w.code);
  if (fast4(w)) {
    const int64_t chunks = w.I / kChunk;
    thread_local std::vector<float> buffer;
    if (buffer.size() < static_cast<size_t>(M * chunks * kChunk)) buffer.resize(M * chunks * kChunk);
    permute_x(x, M, w.I, buffer.data());
    // panels of chunks so that M * panel columns of xp stay in L1 (as panel_columns)
    const int64_t per = M == 1 ? chunks : std::max<int64_t>(1, (4096 / M) / kChunk);
    for (int64_t c0 = 0; c0 < chunks; c0 += per) {
      const int64_t c1 = chunks - c0 < per ? chunks : c0 + per;
      for (int64_t o = o0; o < o1; ++o) row4_chunks<M>(buffer.data(), chunks, w, table, o, c0, c1, c0 > 0, y);
    }
    if (chunks * kChunk < w.I)
      for (int64_t o = o0; o < o1; ++o) row4<M>(x, w, table, o, chunks * kChunk, w.I, true, y);
    return;
  }
  for (int64_t c0 = 0; c0 < w.I; c0 += panel_columns(M)) {
    const int64_t c1 = w.I - c0 < panel_columns(M) ? w.I : c0 + panel_columns(M);
    for (int64_t o = o0; o < o1; ++o) row4<M>(x, w, table, o, c0, c1, c0 > 0, y);
  }
}

template <int M> void rows8(const float * x, const Weight8 & w, float * y, int64_t o0, int64_t o1) {
  for (int64_t c0 = 0; c0 < w.I; c0 += panel_columns(M)) {
    const int64_t c1 = w.I - c0 < panel_columns(M) ? w.I : c0 + panel_columns(M);
    for (int64_t o = o0; o < o1; ++o) row8<M>(x, w, o, c0, c1, c0 > 0, y);
  }
}

// Float (float32, bfloat16, float16) weights: R output rows at a time, so that each load of x feeds R FMAs
// (and each weight load M), with R * M accumulators in registers (R * M + R + 1 <= 32 zmm). 16-bit weights
// are widened in registers (bfloat16: zero-extend and shift; float16: vcvtph2ps). The tail of a row is a
// masked step.
template <int M> constexpr int rows_at_once() { return M <= 4 ? 4 : M <= 8 ? 3 : M <= 14 ? 2 : 1; }

struct F32Src {
  using T = float;
  static __m512 load16(const float * p) { return _mm512_loadu_ps(p); }
  static __m512 load16(__mmask16 k, const float * p) { return _mm512_maskz_loadu_ps(k, p); }
};
struct BF16Src {
  using T = uint16_t;
  static __m512 widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static __m512 load16(const uint16_t * p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p))); }
  static __m512 load16(__mmask16 k, const uint16_t * p) { return widen(_mm256_maskz_loadu_epi16(k, p)); }
};
struct F16Src {
  using T = uint16_t;
  static __m512 load16(const uint16_t * p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p))); }
  static __m512 load16(__mmask16 k, const uint16_t * p) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p)); }
};

template <int M, int R, class S>
void blockf(const float * x, const typename S::T * W, int64_t O, int64_t I, int64_t o, int64_t c0, int64_t c1, bool add,
            float * y) {
  __m512 acc[R][M];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  const typename S::T * wr = W + o * I;
  // the rows after the next group, a line per step: their loads overlap this group's multiply-adds
  // (with several rows of x the kernel is bound by the FMAs, and the hardware prefetcher alone left
  // the weights that come from memory waiting)
  const typename S::T * ahead = o + 3 * R <= O ? wr + 2 * R * I : nullptr;
  int64_t k = c0;
  for (; k + 16 <= c1; k += 16) {
    if (M > 1 && ahead) {
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char *>(ahead + r * I + k), _MM_HINT_T0);
    }
    __m512 wv[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) wv[r] = S::load16(wr + r * I + k);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + m * I + k);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
    }
  }
  if (k < c1) {
    const __mmask16 mask = first(c1 - k);
    __m512 wv[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) wv[r] = S::load16(mask, wr + r * I + k);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * I + k);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const float sum = hsum(acc[r][m]);
      float & out = y[m * O + o + r];
      out = add ? out + sum : sum;
    }
}

// Columns in panels of M * panel <= 16 KB of x (as for int8), rows R at a time, the last few one at a time.
template <int M, class S>
void rowsf(const float * x, const typename S::T * W, int64_t O, int64_t I, float * y, int64_t o0, int64_t o1) {
  constexpr int R = rows_at_once<M>();
  constexpr int64_t P = M == 1 ? INT64_MAX : (4096 / M) / 16 * 16;
  for (int64_t c0 = 0; c0 < I; c0 += P) {
    const int64_t c1 = I - c0 < P ? I : c0 + P;
    int64_t o = o0;
    for (; o + R <= o1; o += R) blockf<M, R, S>(x, W, O, I, o, c0, c1, c0 > 0, y);
    for (; o < o1; ++o) blockf<M, 1, S>(x, W, O, I, o, c0, c1, c0 > 0, y);
  }
}

using Rows4 = void (*)(const float *, const Weight4 &, float *, int64_t, int64_t);
using Rows8 = void (*)(const float *, const Weight8 &, float *, int64_t, int64_t);
const Rows4 kRows4[16] = {rows4<1>, rows4<2>,  rows4<3>,  rows4<4>,  rows4<5>,  rows4<6>,  rows4<7>,  rows4<8>,
                          rows4<9>, rows4<10>, rows4<11>, rows4<12>, rows4<13>, rows4<14>, rows4<15>, rows4<16>};
const Rows8 kRows8[16] = {rows8<1>, rows8<2>,  rows8<3>,  rows8<4>,  rows8<5>,  rows8<6>,  rows8<7>,  rows8<8>,
                          rows8<9>, rows8<10>, rows8<11>, rows8<12>, rows8<13>, rows8<14>, rows8<15>, rows8<16>};
template <class S> using RowsF = void (*)(const float *, const typename S::T *, int64_t, int64_t, float *, int64_t, int64_t);
template <class S>
constexpr RowsF<S> kRowsF[16] = {rowsf<1, S>,  rowsf<2, S>,  rowsf<3, S>,  rowsf<4, S>,  rowsf<5, S>,  rowsf<6, S>,
                                 rowsf<7, S>,  rowsf<8, S>,  rowsf<9, S>,  rowsf<10, S>, rowsf<11, S>, rowsf<12, S>,
                                 rowsf<13, S>, rowsf<14, S>, rowsf<15, S>, rowsf<16, S>};

void gemm4(const float * x, int64_t M, const Weight4 & w, float * y, int64_t o0, int64_t o1) {
  kRows4[M - 1](x, w, y, o0, o1);
}

void gemm8(const float * x, int64_t M, const Weight8 & w, float * y, int64_t o0, int64_t o1) {
  kRows8[M - 1](x, w, y, o0, o1);
}

void gemmf(const float * x, int64_t M, const WeightF32 & w, float * y, int64_t o0, int64_t o1) {
  kRowsF<F32Src>[M - 1](x, w.W, w.O, w.I, y, o0, o1);
}

void gemm16(const float * x, int64_t M, const Weight16 & w, float * y, int64_t o0, int64_t o1) {
  if (w.half) kRowsF<F16Src>[M - 1](x, w.W, w.O, w.I, y, o0, o1);
  else kRowsF<BF16Src>[M - 1](x, w.W, w.O, w.I, y, o0, o1);
}

template <class S> void widen_rows(const uint16_t * src, int64_t n, float * out) {
  int64_t e = 0;
  for (; e + 16 <= n; e += 16) _mm512_storeu_ps(out + e, S::load16(src + e));
  if (e < n) _mm512_mask_storeu_ps(out + e, first(n - e), S::load16(first(n - e), src + e));
}

void widen16(const Weight16 & w, int64_t o0, int64_t o1, float * out) {
  const uint16_t * src = w.W + o0 * w.I;
  if (w.half) widen_rows<F16Src>(src, (o1 - o0) * w.I, out);
  else widen_rows<BF16Src>(src, (o1 - o0) * w.I, out);
}

void dequant4(const Weight4 & w, int64_t o0, int64_t o1, float * out) {
  const __m512 table = _mm512_loadu_ps(w.code);
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t * row = w.packed + o * w.I / 2;
    float * dst = out + (o - o0) * w.I;
    for_each_block_piece(w, o, [&](int64_t i, int64_t n, float s) {
      const __m512 scale = _mm512_set1_ps(s);
      int64_t k = 0;
      for (; k + 32 <= n; k += 32) {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i *>(row + (i + k) / 2));
        _mm512_storeu_ps(dst + i + k, lookup(nibbles_lo(b), table, scale));
        _mm512_storeu_ps(dst + i + k + 16, lookup(nibbles_hi(b), table, scale));
      }
      for (; k < n; k += 16) {
        const int64_t r = n - k < 16 ? n - k : 16;
        _mm512_mask_storeu_ps(dst + i + k, first(r), decode_partial(row + (i + k) / 2, r, table, scale));
      }
    });
  }
}

// float(CB) * (SCB * (1/127)), as bitsandbytes' CPU path (MatMul8bitFp) forms the weight.
void dequant8(const Weight8 & w, int64_t o0, int64_t o1, float * out) {
  for (int64_t o = o0; o < o1; ++o) {
    const int8_t * cb = w.CB + o * w.I;
    float * dst = out + (o - o0) * w.I;
    const __m512 s = _mm512_set1_ps(w.SCB[o] * kInt8Scale);
    for (int64_t k = 0; k < w.I; k += 16) {
      const __mmask16 mask = first(w.I - k < 16 ? w.I - k : 16);
      const __m512 v = int8_to_float(_mm_maskz_loadu_epi8(mask, cb + k));
      _mm512_mask_storeu_ps(dst + k, mask, _mm512_mul_ps(v, s));
    }
  }
}

// y += a x: a plain loop that this file's flags vectorize (restrict: no aliasing check)
void add_scaled(int64_t n, float a, const float * __restrict x, float * __restrict y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace

namespace {
// quantize_block4 on whole vectors: max |x| on the bits (vpmaxud), then per 16 values the 15 compares as
// masks counted into the codes (the compiler's version of the plain loop spent most of its time moving
// masks into vectors); the same IEEE multiply, clamp and compares as quantize_block4_impl. A partial last
// block, or a block not a multiple of 16, goes to the plain loop.
float block4(const float * x, int64_t n, bool tail, const float * bounds, uint8_t * out) {
  if (tail || n % 16 != 0) return quantize_block4_impl(x, n, tail, bounds, out);
  const __m512i sign_off = _mm512_set1_epi32(0x7fffffff);
  __m512i top = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 16) top = _mm512_max_epu32(top, _mm512_and_si512(_mm512_loadu_si512(x + i), sign_off));
  const uint32_t bits = _mm512_reduce_max_epu32(top);
  float am;
  __builtin_memcpy(&am, &bits, 4);
  const float a = am > 1e-38f ? am : 1e-38f;
  const __m512 r = _mm512_set1_ps(1.0f / a), lo = _mm512_set1_ps(-1.0f), hi = _mm512_set1_ps(1.0f);
  __m512 bd[15];
  for (int j = 0; j < 15; ++j) bd[j] = _mm512_set1_ps(bounds[j]);
  const __m512i one = _mm512_set1_epi32(1);
  for (int64_t i = 0; i < n; i += 16) {
    // (clamp: max then min, as q < -1 ? -1 : (q > 1 ? 1 : q) for every number)
    const __m512 q = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), r), lo), hi);
    __m512i idx = _mm512_setzero_si512();
#pragma GCC unroll 15
    for (int j = 0; j < 15; ++j) idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(bd[j], q, _CMP_LT_OQ), idx, one);
    _mm_storeu_si128(reinterpret_cast<__m128i *>(out + i), _mm512_cvtepi32_epi8(idx));
  }
  return am;
}
}  // namespace

const IsaKernels kAvx512Kernels = {"avx512", gemm4, gemm8, gemmf, gemm16, nullptr,
                                        dequant4, dequant8, widen16, add_scaled, block4};

}  // namespace peft::kernels
#endif
