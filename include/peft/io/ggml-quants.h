// ggml's storage encodings of float rows, as GGUF tensor data: F32, F16, BF16 (round to nearest even)
// and the block formats Q8_0 and Q4_0 (32 values per block, an f16 scale first), quantized the way
// ggml's reference quantizers do (quantize_row_q8_0_ref / quantize_row_q4_0_ref), so a file matches
// llama-quantize --pure byte for byte. The type enum itself is in gguf.h.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "peft/io/gguf.h"

namespace peft {

constexpr int64_t kGgmlBlock = 32;  // values per Q8_0 / Q4_0 block (QK8_0, QK4_0)

/// Values per block (1 for F32/F16/BF16) and bytes per block of a ggml type.
int64_t ggml_block_values(GgmlType type);
int64_t ggml_block_bytes(GgmlType type);
/// Bytes of `n` values of `type` (n a multiple of the block size).
uint64_t ggml_nbytes(uint64_t n, GgmlType type);
/// "f32", "f16", "bf16", "q8_0", "q4_0".
std::string ggml_type_name(GgmlType type);

/// Encode a float tensor's values (row-major, numel a multiple of the block size) as `type`'s bytes.
std::string ggml_encode(const at::Tensor & values, GgmlType type);

/// The values a Q8_0 / Q4_0 encoding stands for (ggml's dequantize_row_*): for tests and error measures.
at::Tensor ggml_decode(const std::string & bytes, GgmlType type, int64_t n);

}  // namespace peft
