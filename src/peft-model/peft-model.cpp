// PeftModel: construction, the adapter layers it tracks, which adapters run (set_adapter, disable scope,
// delete_adapter) and which parameters train. Injection, files, merging, hot-swap, mixed batches and the
// compile key live in their own files beside this one.
#include "peft/peft-model.h"
#include "peft/tuners/prompt-learning.h"

#include <algorithm>
#include <cstdio>

#include "peft/error.h"
#include "peft/quant/quantized-linear.h"

namespace peft {

void check_adapter_name(const std::string & name) {
  PEFT_CHECK(!name.empty(), "adapter name must not be empty");
  PEFT_CHECK(name.find('/') == std::string::npos && name.find('\\') == std::string::npos && name != "." &&
                 name.find("..") == std::string::npos,
             "adapter name '", name, "' could escape its folder (no '/', '\\' or '..')");
  PEFT_CHECK(name.find('.') == std::string::npos, "adapter name '", name, "' must not contain '.'");
  PEFT_CHECK(name != kBaseAdapter, "adapter name '__base__' is reserved (it means: no adapter)");
}

PeftModel::PeftModel(std::shared_ptr<CausalLM> model, const AdapterConfig & cfg, const std::string & adapter)
    : model_(std::move(model)) {
  inject(adapter, cfg);
  state_->set_active({adapter});
  refresh_trainable();
}

PeftModel::PeftModel(std::shared_ptr<CausalLM> model) : model_(std::move(model)) {}

std::shared_ptr<PeftModel> PeftModel::from_pretrained(std::shared_ptr<CausalLM> model, const std::string & dir,
                                                      const std::string & adapter, bool is_trainable) {
  auto pm = std::make_shared<PeftModel>(std::move(model));
  pm->load_adapter(dir, adapter, is_trainable);
  pm->set_adapter(adapter);
  return pm;
}

void PeftModel::refresh_layers() {
  layers_.clear();
  for (const auto & m : named_modules(model_)) {
    if (auto t = std::dynamic_pointer_cast<TunerLayer>(m.second)) {
      bool nested = false;
      for (const auto & l : layers_) nested = nested || m.first.rfind(l.first + ".", 0) == 0;
      if (!nested) layers_.emplace_back(m.first, t);
    }
  }
  for (auto & l : layers_) l.second->attach(state_);
}

void PeftModel::set_adapter(const std::vector<std::string> & names) {
  PEFT_CHECK(!names.empty(), "set_adapter needs at least one adapter name");
  for (const auto & n : names) PEFT_CHECK(configs_.count(n), "no adapter named '", n, "'");
  PEFT_CHECK(encoders_.empty() || names.size() == 1, "prompt-learning adapters run one at a time (",
             configs_.at(names[0]).peft_type, ")");
  if (merged()) unmerge_adapter();  // PEFT unmerges (with a warning) before switching
  state_->set_active(names);
  refresh_trainable();
}

std::vector<std::string> PeftModel::adapter_names() const {
  std::vector<std::string> v;
  for (const auto & kv : configs_) v.push_back(kv.first);
  return v;
}

const AdapterConfig & PeftModel::adapter_config(const std::string & name) const {
  auto it = configs_.find(name);
  PEFT_CHECK(it != configs_.end(), "no adapter named '", name, "'");
  return it->second;
}

void PeftModel::set_config_field(const std::string & name, const std::string & key, const nlohmann::json & value) {
  auto it = configs_.find(name);
  PEFT_CHECK(it != configs_.end(), "no adapter named '", name, "'");
  it->second.set_field(key, value, str("adapter '", name, "' config"));
}

void PeftModel::delete_adapter(const std::string & name) {
  PEFT_CHECK(configs_.count(name), "no adapter named '", name, "'");
  for (auto & l : layers_) {
    PEFT_CHECK(!l.second->is_merged(name), "adapter '", name, "' is merged into '", l.first, "'; unmerge it before deleting");
  }
  for (auto & l : layers_) {
    if (l.second->has_adapter(name)) l.second->delete_adapter(name);
  }
  remove_prompt_encoder(name);
  configs_.erase(name);
  adapter_ids_.erase(name);
  std::vector<std::string> active = state_->active();
  active.erase(std::remove(active.begin(), active.end(), name), active.end());
  if (active.empty() && !configs_.empty()) active = {configs_.begin()->first};  // alphabetically first
  state_->set_active(active);
  refresh_trainable();
}

PeftModel::DisableGuard::DisableGuard(PeftModel & m) : m_(m), was_disabled_(m.adapters_disabled()) {
  m_.set_adapters_disabled(true);
}
PeftModel::DisableGuard::~DisableGuard() { m_.set_adapters_disabled(was_disabled_); }

void PeftModel::set_adapters_disabled(bool disabled) {
  state_->set_disabled(disabled);
}

void PeftModel::prepare_forward() {
  if (adapters_disabled() && merged()) unmerge_adapter();
}

void PeftModel::refresh_trainable() {
  for (auto & p : model_->parameters(true)) p.set_requires_grad(false);
  for (auto & c : configs_) {
    for (auto & kv : c.second.shared) kv.second.set_requires_grad(false);
  }
  for (const auto & a : state_->active()) {
    AdapterConfig & cfg = configs_.at(a);
    if (cfg.inference_mode) continue;
    if (cfg.shared_trainable) {
      for (auto & kv : cfg.shared) kv.second.set_requires_grad(true);
    }
    if (auto e = encoders_.find(a); e != encoders_.end()) {
      for (auto & p : e->second->parameters()) p.set_requires_grad(true);
    }
    for (auto & l : layers_) {
      if (!l.second->has_adapter(a)) continue;
      for (auto & p : l.second->adapter_parameters(a)) p.second.set_requires_grad(true);
    }
    if (cfg.bias != "none") {
      for (auto & kv : adapter_state_dict(a)) kv.second.set_requires_grad(true);
    }
  }
}

std::vector<at::Tensor> PeftModel::trainable_parameters() const {
  std::vector<at::Tensor> out;
  for (const auto & p : named_parameters(*model_)) {
    if (p.second.requires_grad()) out.push_back(p.second);
  }
  // trainable shared tensors (VB-LoRA's vector bank) are buffers of the layers, listed once
  for (const auto & c : configs_) {
    if (!c.second.shared_trainable) continue;
    for (const auto & kv : c.second.shared) {
      if (kv.second.requires_grad()) out.push_back(kv.second);
    }
  }
  return out;
}

std::string PeftModel::trainable_summary() const {
  int64_t trainable = 0, all = 0;
  for (const auto & p : named_parameters(*model_)) {
    all += p.second.numel();
    if (p.second.requires_grad()) trainable += p.second.numel();
  }
  for (const auto & c : configs_) {  // trainable shared tensors are parameters in PEFT (VB-LoRA's bank)
    if (!c.second.shared_trainable) continue;
    for (const auto & kv : c.second.shared) {
      all += kv.second.numel();
      if (kv.second.requires_grad()) trainable += kv.second.numel();
    }
  }
  // a quantized layer's weight counts as its elements, not its packed bytes (upstream's
  // get_nb_trainable_parameters: a bitsandbytes 4-bit parameter's numel times 2); its codes are buffers here
  for (const auto & m : named_modules(model_)) {
    if (auto q = std::dynamic_pointer_cast<quant::QuantizedLinear>(m.second)) all += q->out_features() * q->in_features();
  }
  char pct[32];
  std::snprintf(pct, sizeof(pct), "%.4f", all ? 100.0 * trainable / all : 0.0);
  return str("trainable params: ", trainable, " || all params: ", all, " || trainable%: ", pct);
}

}  // namespace peft
