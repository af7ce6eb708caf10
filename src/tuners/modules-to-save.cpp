#include "peft/tuners/modules-to-save.h"

#include "peft/error.h"

namespace peft {

ModulesToSaveWrapper::ModulesToSaveWrapper(LayerPtr original) : TunerLayer(std::move(original), "original_module") {
  holder_ = register_module("modules_to_save", std::make_shared<torch::nn::Module>());
}

void ModulesToSaveWrapper::add_copy(const std::string & adapter) {
  LayerPtr c = base_layer->clone_layer();
  holder_->register_module(adapter, c);
  copies_[adapter] = c;
}

std::vector<std::string> ModulesToSaveWrapper::adapter_names() const {
  std::vector<std::string> v;
  for (const auto & kv : copies_) v.push_back(kv.first);
  return v;
}

void ModulesToSaveWrapper::delete_adapter(const std::string & name) {
  TunerLayer::delete_adapter(name);
  if (copies_.count(name)) {
    holder_->unregister_module(name);
    copies_.erase(name);
  }
}

LayerPtr ModulesToSaveWrapper::current() const {
  if (disabled()) return base_layer;
  LayerPtr found;
  for (const auto & a : active()) {
    auto it = copies_.find(a);
    if (it == copies_.end()) continue;
    PEFT_CHECK(!found, "modules_to_save: only one adapter with a copy of this module may be active");
    found = it->second;
  }
  return found ? found : base_layer;
}

}  // namespace peft
