// bitsandbytes' quantized weight formats, bit for bit: 4-bit NF4/FP4 in blocks with per-block absmax
// (optionally double-quantized: the absmax themselves 8-bit blockwise with an offset), and LLM.int8's
// vector-wise int8 with one absmax per row. Quantization follows bitsandbytes' pure-PyTorch "default"
// backend op for op, so the codes and scales equal what bitsandbytes writes (tests/data/quant).
// n = number of weights, O/I = out/in features.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace peft::quant {

enum class Format { none, nf4, fp4, int8 };
/// "nf4", "fp4", "int8", "none".
std::string format_name(Format f);
/// Parse a format name; throws peft::Error naming `what` (a flag or config field) on anything else.
Format parse_format(const std::string & name, const std::string & what);

/// "float32", "bfloat16", "float16" (the names bitsandbytes and transformers write), and back.
std::string dtype_name(at::ScalarType t);
at::ScalarType parse_dtype_name(const std::string & name, const std::string & what);

/// The 16 code values of a 4-bit format (bitsandbytes' get_4bit_type), float32.
at::Tensor code_4bit(Format f);
/// bitsandbytes' signed 8-bit dynamic map (create_dynamic_map), 256 values, float32, sorted.
at::Tensor dynamic_map();

/// 8-bit blockwise codes of a float tensor (bitsandbytes' quantize_blockwise; used for double quantization).
struct Blockwise8 {
  at::Tensor codes;   // uint8, shape of the input
  at::Tensor absmax;  // float32 (blocks)
  at::Tensor code;    // float32 (256)
  int64_t blocksize = 256;
};
Blockwise8 quantize_blockwise(const at::Tensor & A, const at::Tensor & code, int64_t blocksize);
at::Tensor dequantize_blockwise(const Blockwise8 & q);

/// A 4-bit weight as bitsandbytes' Params4bit + QuantState hold it.
struct Quant4 {
  Format format = Format::nf4;
  int64_t blocksize = 64;
  std::vector<int64_t> shape;               // the weight's shape, e.g. (O, I)
  at::ScalarType dtype = at::kFloat;        // the dtype it was quantized from (QuantState.dtype)
  at::Tensor packed;                        // uint8 (ceil(n/2), 1): element 2k in the high nibble of byte k
  at::Tensor absmax;                        // float32 (blocks); uint8 codes when double-quantized
  at::Tensor code;                          // float32 (16)
  bool nested = false;                      // double quantization:
  at::Tensor nested_absmax;                 //   float32, one per 256 absmax
  at::Tensor nested_code;                   //   float32 (256), the dynamic map
  int64_t nested_blocksize = 256;
  at::Tensor offset;                        //   0-dim float32: mean of the absmax, subtracted before quantizing them
  int64_t numel() const;
  /// The per-block scales as float32 (dequantizing the nested codes when double-quantized).
  at::Tensor absmax_float() const;
  /// Bytes held (packed codes and scales): what the weight costs in memory.
  int64_t nbytes() const;
};
/// Quantize W (any float dtype) in blocks of `blocksize` (32 .. 4096, a power of two).
Quant4 quantize_4bit(const at::Tensor & W, Format f, int64_t blocksize, bool double_quant);
/// The float32 weight, shape `q.shape` (bitsandbytes' dequantize_4bit).
at::Tensor dequantize_4bit(const Quant4 & q);

/// An int8 weight as bitsandbytes' Int8Params hold it: W ~ CB * SCB / 127 row by row.
struct Quant8 {
  at::Tensor CB;   // int8 (O, I)
  at::Tensor SCB;  // float32 (O), absmax of each row
  int64_t nbytes() const;
};
/// Quantize a 2-D weight as Int8Params does: int8_vectorwise_quant of its float16 copy, threshold 0.
Quant8 quantize_int8(const at::Tensor & W);
/// The float32 weight as bitsandbytes computes with it on CPU (MatMul8bitFp: CB * (SCB * (1/127)); its
/// int8_vectorwise_dequant, (CB * SCB) / 127, differs by an ulp in places).
at::Tensor dequantize_int8(const Quant8 & q);

}  // namespace peft::quant
