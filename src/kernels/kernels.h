// Fused CPU kernels for linear layers whose weight is quantized in bitsandbytes' formats (4-bit NF4/FP4
// blockwise, LLM.int8 vector-wise): y = x W^T for a few rows of x without materialising W, and W's
// rows dequantized bit-exactly. The same small-M product for a plain float32 weight (peft::linear_small,
// batched decode): each weight read once for all rows of x. Internal header; the ATen-level wrapper is linear-quant.h. The ISA
// (AVX-512, AVX2+FMA, portable C++) is picked at run time.
#pragma once
#include <cstdint>

namespace peft::kernels {

/// 4-bit weight, W (O, I) flattened as e = o*I + i: element e in byte e/2 of `packed`, even e in the high
/// nibble, odd e in the low one; W[e] = code[nibble] * absmax[e / blocksize]. I and blocksize even.
struct Weight4 {
  const uint8_t * packed;  // (O*I/2)
  const float * absmax;    // (ceil(O*I / blocksize))
  const float * code;      // (16)
  int64_t O, I, blocksize;
};

/// LLM.int8 vector-wise weight: W[o, i] = CB[o, i] * SCB[o] / 127.
struct Weight8 {
  const int8_t * CB;  // (O, I) row-major
  const float * SCB;  // (O)
  int64_t O, I;
};

/// Plain float32 weight W (O, I), row-major contiguous.
struct WeightF32 {
  const float * W;  // (O*I)
  int64_t O, I;
};

/// 16-bit float weight W (O, I), row-major contiguous: bfloat16 bits, or IEEE float16 bits if `half`.
/// The kernels widen it to float32 in registers (exactly) and accumulate in float32.
struct Weight16 {
  const uint16_t * W;  // (O*I)
  int64_t O, I;
  bool half;
};

/// y (M, O) = x (M, I) W^T, x and y row-major contiguous float32, y overwritten. Meant for small M
/// (larger M is done in groups of 16 rows): each weight is decoded once per group and used for all its rows.
void gemm_small(const float * x, int64_t M, const Weight4 & w, float * y);
void gemm_small(const float * x, int64_t M, const Weight8 & w, float * y);
void gemm_small(const float * x, int64_t M, const WeightF32 & w, float * y);
void gemm_small(const float * x, int64_t M, const Weight16 & w, float * y);

/// Rows [o0, o1) of W dequantized into out ((o1 - o0) x I, row-major), bit-exact with the reference
/// formulas (4-bit: code[q] * absmax[b]; int8: float(CB) * (SCB * (1/127)), as bitsandbytes' CPU path MatMul8bitFp).
void dequantize_rows(const Weight4 & w, int64_t o0, int64_t o1, float * out);
void dequantize_rows(const Weight8 & w, int64_t o0, int64_t o1, float * out);
/// 16-bit rows widened to float32 (exact).
void dequantize_rows(const Weight16 & w, int64_t o0, int64_t o1, float * out);

/// 4-bit products with int8 activations (llama.cpp's Q4_0 x Q8_0 arithmetic on bitsandbytes' layout), for
/// gemm_small on a Weight4 once turned on: each row of x quantized per 32 columns (d = max |x| / 127,
/// q = round(x / d)), the 16-entry code as int8 (round(code * 127 / max |code|)), integer dot products of 32
/// columns, scaled by d and the block's absmax in float32. About llama.cpp's accuracy, not bitsandbytes'
/// arithmetic (the code table alone moves a weight by up to 0.4% of its block's absmax): off by default;
/// PEFT_4BIT_ACTIVATIONS=int8 turns it on at start. Rows with in_features or blocksize not a multiple of 32
/// (or a blocksize not a power of two) keep the float32 kernels.
void set_int8_activations(bool on);
bool int8_activations();

/// One block of bitsandbytes' 4-bit quantization (single-threaded): out[i] = the number of the 15 sorted
/// `bounds` below clamp(x[i] * (1 / a), -1, 1), a = max(max |x|, 1e-38); a partial last block (`tail`)
/// divides, x[i] / a, as the default backend does. Returns the block's absmax as stored: a if `tail`,
/// else max |x| (unclamped).
float quantize_block4(const float * x, int64_t n, bool tail, const float * bounds, uint8_t * out);

/// y[i] += a * x[i] for i < n (single-threaded; x and y must not overlap).
void axpy(int64_t n, float a, const float * x, float * y);

/// The instruction set in use: "avx512", "avx2" or "portable".
const char * isa();
/// Force an instruction set (nullptr: the best this CPU has). Throws peft::Error, and changes nothing,
/// for an unknown name or one this CPU (or this build) lacks.
void force_isa(const char * name);

}  // namespace peft::kernels
