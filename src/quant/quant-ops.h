// The quantized linear products as peft:: custom ops: one node in a captured graph, an autograd rule that
// sends gradients to the input only (the base is frozen), and kernels chosen by device: the fused CPU
// kernels for float32 on CPU, dequantize-then-linear with ATen elsewhere (CUDA).
#pragma once
#include <ATen/ATen.h>

namespace peft::quant::ops {

/// x (.., I) float32 -> (.., O) = x W^T, W 4-bit: packed (n/2, 1) uint8, absmax (blocks) float32, code (16).
at::Tensor linear_4bit(const at::Tensor & x, const at::Tensor & packed, const at::Tensor & absmax, const at::Tensor & code,
                       int64_t out_features, int64_t in_features, int64_t blocksize);
/// x (.., I) float32 -> (.., O) = x W^T, W = CB * SCB / 127 (rows).
at::Tensor linear_int8(const at::Tensor & x, const at::Tensor & CB, const at::Tensor & SCB);

/// Rows of a quantized W (V, D) gathered: ids (..) int64 -> (.., D) float32, each row dequantized bit for bit
/// as dequantize_4bit / dequantize_int8 give it. No gradient (the table is frozen, ids are integers).
at::Tensor embedding_4bit(const at::Tensor & ids, const at::Tensor & packed, const at::Tensor & absmax,
                          const at::Tensor & code, int64_t num_embeddings, int64_t dim, int64_t blocksize);
at::Tensor embedding_int8(const at::Tensor & ids, const at::Tensor & CB, const at::Tensor & SCB);

}  // namespace peft::quant::ops
