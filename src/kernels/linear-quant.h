// ATen-level linear layers over bitsandbytes-quantized or 16-bit float weights (CPU, float32 compute): y = x W^T and the gradient
// to x, by the fused kernels for a few rows and by tiles of dequantized W rows + BLAS for more. No bias,
// no autograd: the caller (the quantized layers and their custom ops) handles both.
#pragma once
#include <ATen/ATen.h>

#include "kernels/kernels.h"

namespace peft::kernels {

/// x (.., I) float32 on the CPU, any strides -> (.., O) = x W^T.
at::Tensor linear_forward(const at::Tensor & x, const Weight4 & w);
at::Tensor linear_forward(const at::Tensor & x, const Weight8 & w);
at::Tensor linear_forward(const at::Tensor & x, const Weight16 & w);

/// grad_y (.., O) -> grad_x (.., I) = grad_y W.
at::Tensor linear_backward_input(const at::Tensor & grad_y, const Weight4 & w);
at::Tensor linear_backward_input(const at::Tensor & grad_y, const Weight8 & w);
at::Tensor linear_backward_input(const at::Tensor & grad_y, const Weight16 & w);

/// Views of CPU tensors as kernel weights (checked: dtypes, sizes, contiguity). The tensors must outlive
/// the returned struct. packed uint8 (O*I/2 elements, any shape), absmax float32 (ceil(O*I/blocksize)),
/// code float32 (16); I and blocksize even.
Weight4 weight4(const at::Tensor & packed, const at::Tensor & absmax, const at::Tensor & code, int64_t O, int64_t I,
                int64_t blocksize);
/// CB int8 (O, I), SCB float32 (O).
Weight8 weight8(const at::Tensor & CB, const at::Tensor & SCB);
/// W bfloat16 or float16 (O, I), contiguous.
Weight16 weight16(const at::Tensor & W);

}  // namespace peft::kernels
