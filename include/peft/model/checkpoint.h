// Gradient checkpointing (torch.utils.checkpoint, transformers' gradient_checkpointing_enable): a piece of
// the forward runs without keeping its activations; the backward pass runs it again, with the same random
// numbers (dropout), and backpropagates through the recomputation.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <vector>

namespace peft {

using CheckpointFn = std::function<at::Tensor(const at::Tensor & x)>;

/// fn(x), its activations dropped (fn runs with autograd, as in the backward pass, then its graph is
/// released): only x is kept. The result requires a gradient even when x does not
/// (the first decoder layer's input under frozen embeddings), so the tensors fn trains get theirs: the
/// backward pass recomputes fn(x) under the random state of this call and runs backward through it,
/// which accumulates their gradients (each tensor's hooks fire once) and returns x's. `fn` must own
/// what it captures (it runs again later).
at::Tensor checkpoint(const at::Tensor & x, CheckpointFn fn);

/// A checkpointed function that reads per-call tensors besides x (masks, positions, rotary tables).
using CheckpointArgsFn = std::function<at::Tensor(const at::Tensor & x, const std::vector<at::Tensor> & args)>;

/// While one is alive on this thread (peft::compile capturing a graph that records autograd),
/// checkpoint_node() puts checkpointed functions in the graph as single nodes and keeps them here: the
/// captured program owns them (its nodes name them).
class CheckpointCapture {
 public:
  CheckpointCapture();
  ~CheckpointCapture();
  CheckpointCapture(const CheckpointCapture &) = delete;
  CheckpointCapture & operator=(const CheckpointCapture &) = delete;
  /// The capture on this thread, or nullptr.
  static CheckpointCapture * current();
  std::vector<std::shared_ptr<void>> functions;

 private:
  CheckpointCapture * outer_;
};

/// fn(x, args) as one node of the graph being captured (the op peft::checkpointed(x, args, fn)): when the
/// graph runs with autograd the node is checkpoint(x, fn(., args)), keeping only its inputs, else plain
/// fn(x, args). Needs a CheckpointCapture on this thread; `fn` must own what it captures.
at::Tensor checkpoint_node(const at::Tensor & x, const std::vector<at::Tensor> & args, CheckpointArgsFn fn);

}  // namespace peft
