// The elementwise steps of a decoder layer as single custom ops (namespace "peft"): RMSNorm, the rotary
// embedding, the scaled and masked softmax of attention, and the SiLU gate. At decode each is a handful of
// ATen ops on a few hundred floats, whose dispatch costs more than their arithmetic (about 40% of an NF4
// decode step's time before these ops). One node each in a captured graph.
// For float32 CPU strided tensors with no input that needs a gradient under grad mode, one loop each;
// otherwise (other dtypes or devices, training) the ATen composition, which autograd differentiates.
#pragma once
#include <ATen/ATen.h>

namespace peft::ops {

/// Llama's RMSNorm: weight * (x * rsqrt(mean(x^2, -1) + eps)), computed in float32, cast back to x's dtype
/// before the weight (as Hugging Face's LlamaRMSNorm).
at::Tensor rms_norm(const at::Tensor & x, const at::Tensor & weight, double eps);

/// Rotary embedding, Hugging Face's rotate_half form: x * cos + cat(-x2, x1) * sin, with x (B, H, S, Dh)
/// and cos/sin (B, 1, S, Dh).
at::Tensor rotary(const at::Tensor & x, const at::Tensor & cos, const at::Tensor & sin);

/// softmax(where(mask, scores * scale, lowest), -1) in float32, cast back to scores' dtype; scores
/// (B, H, S, L), mask bool broadcastable to it (B, 1, S, L). "lowest" is the dtype's lowest finite value,
/// so that a fully masked row is uniform, as in the composition.
at::Tensor masked_softmax(const at::Tensor & scores, const at::Tensor & mask, double scale);

/// silu(gate) * up, the gated MLP's activation.
at::Tensor silu_mul(const at::Tensor & gate, const at::Tensor & up);

}  // namespace peft::ops
