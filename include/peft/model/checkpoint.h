// Gradient checkpointing (torch.utils.checkpoint, transformers' gradient_checkpointing_enable): a piece of
// the forward runs without keeping its activations; the backward pass runs it again, with the same random
// numbers (dropout), and backpropagates through the recomputation.
#pragma once
#include <ATen/ATen.h>

#include <functional>

namespace peft {

using CheckpointFn = std::function<at::Tensor(const at::Tensor & x)>;

/// fn(x), its activations dropped (fn runs with autograd, as in the backward pass, then its graph is
/// released): only x is kept. The result requires a gradient even when x does not
/// (the first decoder layer's input under frozen embeddings), so the tensors fn trains get theirs: the
/// backward pass recomputes fn(x) under the random state of this call and runs backward through it,
/// which accumulates their gradients (each tensor's hooks fire once) and returns x's. `fn` must own
/// what it captures (it runs again later).
at::Tensor checkpoint(const at::Tensor & x, CheckpointFn fn);

}  // namespace peft
