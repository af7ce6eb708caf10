// Capture: run the model's forward once under LibTorch's tracer with the runtime inputs and every
// parameter and buffer as graph inputs, giving one graph from embedding to head (no breaks).
#pragma once
#include "peft/model/causal-lm.h"
#include "peft/peft-model/peft-input.h"
#include "program.h"

namespace peft::compile_detail {

/// Which optional runtime inputs a call has; part of the cache key.
struct InputLayout {
  bool embeds = false;  // inputs_embeds instead of input_ids
  bool mask = false, position_ids = false, segments = false, cache = false, routing = false;
  bool hidden = false;  // the output is the final hidden states (not a runtime input: part of the graph)
  size_t cache_layers = 0;
  static InputLayout of(const PeftInput & in);
  /// The runtime inputs in graph order: ids (or inputs_embeds), [mask], [position_ids], [segment_ids], [cache_position, k0, v0, k1, ...].
  std::vector<c10::IValue> pack(const PeftInput & in) const;
};

/// Trace body(in) (model.forward_unchecked, or a PeftModel's: prompt learning's virtual tokens happen
/// before the model's forward); every parameter and buffer of `model` is a graph input. The default RNG
/// state is restored afterwards, so capturing does not shift random streams (dropout) relative to eager runs.
/// A mixed-adapter batch's in.adapter_rows is a graph input, handed to body (PeftModel::forward_unchecked
/// routes the rows by it).
Program capture(CausalLM & model, const PeftLogitsFn & body, const PeftInput & in, const InputLayout & layout);

}  // namespace peft::compile_detail
