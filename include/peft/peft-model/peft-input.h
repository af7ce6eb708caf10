// The input of a PeftModel: the model's ForwardInput plus which adapter each row runs (a mixed-adapter
// batch). The model layer never sees adapters; a PeftModel, its compiled form and the serving engine do.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "peft/model/causal-lm.h"

namespace peft {

/// The adapter name of a mixed-batch row that runs no adapter (PeftInput::adapter_names; PEFT's
/// __base__), reserved: no adapter may have it. Spelled once, in mixed-batch.cpp.
extern const char kBaseAdapter[];

/// A model input plus which adapter each row runs (PEFT's forward(..., adapter_names=...)): a
/// mixed-adapter batch. The model layer's ForwardInput knows nothing of adapters; a PeftModel and a
/// compiled PeftModel take either.
struct PeftInput : ForwardInput {
  PeftInput() = default;
  explicit PeftInput(ForwardInput in) : ForwardInput(std::move(in)) {}
  std::vector<std::string> adapter_names;  // one adapter per row, kBaseAdapter = none; empty = the active ones
  at::Tensor adapter_rows;                 // (A, B) float routing (mixed_rows(adapter_names)); set by forward()
};
/// A forward that takes per-row adapters (PeftModel::forward, CompiledModel::forward).
using PeftLogitsFn = std::function<at::Tensor(const PeftInput &)>;

}  // namespace peft
