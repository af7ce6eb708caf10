#include "peft/tuners/modules-to-save.h"

#include "peft/error.h"
#include "peft/tuners/routing.h"

namespace peft {

ModulesToSaveWrapper::ModulesToSaveWrapper(LayerPtr original) : TunerLayer(std::move(original), "original_module") {
  holder_ = register_module("modules_to_save", std::make_shared<torch::nn::Module>());
}

void ModulesToSaveWrapper::add_copy(const std::string & adapter, bool kept_when_disabled) {
  LayerPtr c = base_layer_->clone_layer();
  holder_->register_module(adapter, c);
  copies_[adapter] = c;
  if (kept_when_disabled) kept_.insert(adapter);
  track_adapter(adapter);
}

void ModulesToSaveWrapper::forget(const std::string & name) {
  kept_.erase(name);
  if (copies_.count(name)) {
    holder_->unregister_module(name);
    copies_.erase(name);
  }
}

at::Tensor ModulesToSaveWrapper::forward(const at::Tensor & x) {
  if (routing().active() && !disabled()) return forward_mixed(x);
  return current()->forward(x);
}

at::Tensor ModulesToSaveWrapper::forward_mixed(const at::Tensor & x) {
  // rows naming an adapter with a copy use that copy; all others the original module
  at::Tensor y = base_layer_->forward(x);
  const RowRouting & r = routing();
  for (const auto & kv : copies_) {
    at::Tensor m = r.mask(kv.first, y.dim());
    if (!m.defined()) continue;
    y = y + (kv.second->forward(x) - y) * m;
  }
  return y;
}

LayerPtr ModulesToSaveWrapper::current() const {
  if (!disabled()) return active_copy();
  for (const auto & a : active()) {
    if (kept_.count(a) && copies_.count(a)) return copies_.at(a);
  }
  return base_layer_;
}

LayerPtr ModulesToSaveWrapper::active_copy() const {
  LayerPtr found;
  for (const auto & a : active()) {
    auto it = copies_.find(a);
    if (it == copies_.end()) continue;
    PEFT_CHECK(!found, "modules_to_save: only one adapter with a copy of this module may be active");
    found = it->second;
  }
  return found ? found : base_layer_;
}

}  // namespace peft
