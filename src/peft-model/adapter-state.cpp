// AdapterState (adapter-state.h) as a compile key: PeftModel::state_key() and a readable difference between keys.
#include "peft/tuners/adapter-state.h"

#include "peft/peft-model.h"

namespace peft {

namespace {

std::string join(const std::vector<std::string> & v) {
  std::string s;
  for (const auto & x : v) s += (s.empty() ? "" : ",") + x;
  return "[" + s + "]";
}

std::string describe(const std::vector<std::pair<std::string, std::string>> & v) {
  std::string s;
  for (const auto & x : v) s += (s.empty() ? "" : ",") + x.first + "{" + x.second + "}";
  return "[" + s + "]";
}

}  // namespace

std::string AdapterStateKey::diff(const AdapterStateKey & before) const {
  if (injections != before.injections) {
    std::string a, b;
    for (const auto & x : before.injections) a += (a.empty() ? "" : ",") + x.first + "#" + std::to_string(x.second);
    for (const auto & x : injections) b += (b.empty() ? "" : ",") + x.first + "#" + std::to_string(x.second);
    return "adapters (injections): [" + a + "] -> [" + b + "]";
  }
  if (active != before.active) return "active adapters: " + join(before.active) + " -> " + join(active);
  if (disabled != before.disabled) return std::string("disabled: ") + (before.disabled ? "true" : "false") + " -> " +
                                          (disabled ? "true" : "false");
  if (layers.size() != before.layers.size()) {
    return "adapter layers: " + std::to_string(before.layers.size()) + " -> " + std::to_string(layers.size());
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto & a = before.layers[i], & b = layers[i];
    if (a.path != b.path) return "adapter layer " + std::to_string(i) + ": '" + a.path + "' -> '" + b.path + "'";
    if (a.active != b.active) return "'" + b.path + "' active here: " + describe(a.active) + " -> " + describe(b.active);
    if (a.merged != b.merged) return "'" + b.path + "' merged: " + join(a.merged) + " -> " + join(b.merged);
  }
  return "";
}

const AdapterStateKey & PeftModel::state_key() const {
  if (key_version_ != state_->version()) {
    AdapterStateKey k;
    k.injections.assign(adapter_ids_.begin(), adapter_ids_.end());
    k.active = state_->active();
    k.disabled = state_->disabled();
    for (const auto & l : layers_) k.layers.push_back(l.second->state_key(l.first));
    key_ = std::move(k);
    key_version_ = state_->version();
  }
  return key_;
}

}  // namespace peft
