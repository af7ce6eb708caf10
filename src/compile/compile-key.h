// CompileKey: everything a captured graph depends on besides tensor values, as named fields. Two calls
// with equal keys run the same computation; diff() names the field that differs (PEFT_LOG=recompiles).
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "peft/model/causal-lm.h"
#include "peft/peft-model/peft-input.h"
#include "peft/tuners/adapter-state.h"

namespace peft::compile_detail {

/// One runtime input's dtype, device and shape ("ids", "mask", ...; absent inputs are not listed).
struct InputSignature {
  const char * role = "";
  at::ScalarType dtype = at::kFloat;
  c10::DeviceType device = c10::DeviceType::CPU;
  std::vector<int64_t> sizes;
  bool operator==(const InputSignature & o) const {
    return std::string(role) == o.role && dtype == o.dtype && device == o.device && sizes == o.sizes;
  }
  std::string str() const;
};

struct CompileKey {
  AdapterStateKey adapters;            // PeftModel::state_key() (empty for a plain model)
  bool training = false;               // the model's train/eval mode
  bool grad = false;                   // autograd enabled for the call
  at::ScalarType dtype = at::kFloat;   // the model's weight dtype
  std::vector<InputSignature> inputs;  // ids, mask, positions, cache slots and layers, mixed-batch routing
  size_t cache_layers = 0;             // KV cache layers (0: no cache)
  bool hidden = false;                 // the graph ends at the final hidden states (ForwardInput::hidden_states)
  bool checkpointing = false;          // training with autograd under gradient checkpointing: layers are nodes

  bool operator==(const CompileKey & o) const {
    return same_call(o) && adapters == o.adapters;
  }
  /// Equal apart from the adapter state (the fast path checks that through PeftModel::version()).
  bool same_call(const CompileKey & o) const {
    return training == o.training && grad == o.grad && dtype == o.dtype && inputs == o.inputs &&
           cache_layers == o.cache_layers && hidden == o.hidden && checkpointing == o.checkpointing;
  }
  /// "field: old -> new" for the first field that differs from `before` ("" when equal).
  std::string diff(const CompileKey & before) const;
  /// Mode and shapes, one line (explain()).
  std::string summary() const;
};

/// The call-side fields of the key for `in` (adapters left empty).
CompileKey call_key(const CausalLM & model, const PeftInput & in);

}  // namespace peft::compile_detail
