#include "compile-key.h"

#include <sstream>

namespace peft::compile_detail {

namespace {

void add(std::vector<InputSignature> & v, const char * role, const at::Tensor & t) {
  if (!t.defined()) return;
  v.push_back({role, t.scalar_type(), t.device().type(), t.sizes().vec()});
}

std::string mode_of(const CompileKey & k) {
  return std::string(k.training ? "train" : "eval") + (k.grad ? ",grad," : ",no_grad,") +
         (k.checkpointing ? "checkpointed," : "") + c10::toString(k.dtype);
}

std::string inputs_of(const CompileKey & k) {
  std::string s;
  for (const auto & i : k.inputs) s += (s.empty() ? "" : " ") + i.str();
  if (k.cache_layers) s += " x" + std::to_string(k.cache_layers) + " layers";
  return s;
}

}  // namespace

std::string InputSignature::str() const {
  std::ostringstream s;
  s << role << c10::toString(dtype) << c10::IntArrayRef(sizes) << (device == c10::DeviceType::CPU ? "" : c10::DeviceTypeName(device, true));
  return s.str();
}

CompileKey call_key(const CausalLM & model, const PeftInput & in) {
  CompileKey k;
  k.training = model.is_training();
  k.grad = at::GradMode::is_enabled();
  k.dtype = model.options().dtype().toScalarType();
  add(k.inputs, "ids", in.input_ids);
  add(k.inputs, "embeds", in.inputs_embeds);
  add(k.inputs, "mask", in.attention_mask);
  add(k.inputs, "pos", in.position_ids);
  add(k.inputs, "segments", in.segment_ids);
  if (in.cache) {
    add(k.inputs, "cache_pos", in.cache_position);
    add(k.inputs, "kv", in.cache->k[0]);
    k.cache_layers = in.cache->k.size();
  }
  add(k.inputs, "mixed", in.adapter_rows);
  k.hidden = in.hidden_states;
  k.checkpointing = k.training && k.grad && model.gradient_checkpointing();
  return k;
}

std::string CompileKey::diff(const CompileKey & before) const {
  if (adapters != before.adapters) return "adapter state changed: " + adapters.diff(before.adapters);
  if (training != before.training || grad != before.grad || dtype != before.dtype || checkpointing != before.checkpointing) {
    return "mode changed: " + mode_of(before) + " -> " + mode_of(*this);
  }
  if (inputs != before.inputs || cache_layers != before.cache_layers) {
    return "input shapes changed: " + inputs_of(before) + " -> " + inputs_of(*this);
  }
  if (hidden != before.hidden) {
    return std::string("output changed: ") + (before.hidden ? "hidden states -> logits" : "logits -> hidden states");
  }
  return "";
}

std::string CompileKey::summary() const { return mode_of(*this) + " " + inputs_of(*this) + (hidden ? " -> hidden" : ""); }

}  // namespace peft::compile_detail
