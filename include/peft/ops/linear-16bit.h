// A linear layer whose frozen weight is stored in 16 bits (bfloat16 or float16) and computed in float32:
// the CPU kernels widen the weight in registers (a few rows: one pass over W; more rows: tiles of W widened
// into a cache-sized buffer for BLAS), accumulate in float32 and round the result to the input's dtype
// (as autocast does). One "peft::linear_16bit" node in a captured graph; autograd sends the gradient to the
// input only (the weight and bias are frozen). Other devices: at::linear in the weight's dtype.
#pragma once
#include <ATen/ATen.h>

namespace peft::ops {

/// Whether linear_16bit takes this weight and bias: a 2-D contiguous CPU bfloat16/float16 weight, neither
/// needing a gradient under grad mode (a weight being trained goes through at::linear, which differentiates it).
bool linear_16bit_takes(const at::Tensor & weight, const at::Tensor & bias);

/// x (.., I) float32 / bfloat16 / float16 -> (.., O) = x W^T + b in x's dtype, accumulated in float32.
at::Tensor linear_16bit(const at::Tensor & x, const at::Tensor & weight, const c10::optional<at::Tensor> & bias);

}  // namespace peft::ops
