#include "peft/peft-model.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <set>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/nn/layers.h"
#include "peft/tuners/modules-to-save.h"
#include "peft/tuners/registry.h"
#include "peft/tuners/routing.h"
#include "peft/tuners/targeting.h"

namespace peft {

namespace {

std::atomic<uint64_t> g_next_adapter_id{1};
const std::string kPrefix = "base_model.model.";

bool ends_with(const std::string & s, const std::string & e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

}  // namespace

void check_adapter_name(const std::string & name) {
  PEFT_CHECK(!name.empty(), "adapter name must not be empty");
  PEFT_CHECK(name.find('/') == std::string::npos && name.find('\\') == std::string::npos && name != "." &&
                 name.find("..") == std::string::npos,
             "adapter name '", name, "' could escape its folder (no '/', '\\' or '..')");
  PEFT_CHECK(name.find('.') == std::string::npos, "adapter name '", name, "' must not contain '.'");
  PEFT_CHECK(name != "__base__", "adapter name '__base__' is reserved (it means: no adapter)");
}

PeftModel::PeftModel(std::shared_ptr<CausalLM> model, const AdapterConfig & cfg, const std::string & adapter)
    : model_(std::move(model)) {
  inject(adapter, cfg);
  active_ = {adapter};
  for (auto & l : layers_) l.second->set_active(active_);
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
}

std::vector<std::pair<std::string, LayerPtr>> PeftModel::inject(const std::string & name, const AdapterConfig & cfg_in) {
  AdapterConfig cfg = cfg_in;
  if (const auto complete = tuner_method(cfg.peft_type).complete) complete(cfg, model_->config().model_type);
  check_adapter_name(name);
  PEFT_CHECK(!configs_.count(name), "an adapter named '", name, "' exists already");
  for (const auto & kv : configs_) {
    PEFT_CHECK(kv.second.peft_type == cfg.peft_type, "adapter '", name, "' is ", cfg.peft_type, " but '", kv.first,
               "' is ", kv.second.peft_type, " (one model holds adapters of one method)");
    PEFT_CHECK(cfg.bias == "none" || kv.second.bias == "none", "only one adapter may train biases (bias != \"none\")");
  }
  const TunerMethod & method = tuner_method(cfg.peft_type);
  const auto defaults = method.default_targets(model_->config().model_type);
  PEFT_CHECK(cfg.all_linear || cfg.target_regex || !cfg.target_list.empty() || !defaults.empty() ||
                 !cfg.modules_to_save.empty(),
             "no target_modules given and ", cfg.peft_type, " has no default for model_type '",
             model_->config().model_type, "'");
  if (!cfg.all_linear && !cfg.target_regex && cfg.target_list.empty() && !defaults.empty()) {
    cfg.target_list = defaults;  // as PEFT, the defaults are written into the adapter's config
    cfg.fields["target_modules"] = defaults;
  }

  // 1. decide targets without touching the model
  std::vector<std::pair<std::string, LayerPtr>> targets;
  std::vector<std::pair<std::string, LayerPtr>> save_targets;
  std::vector<std::string> wrapper_prefixes;
  for (const auto & m : named_modules(model_)) {
    const std::string & path = m.first;
    if (path.empty()) continue;
    bool inside = false;
    for (const auto & p : wrapper_prefixes) inside = inside || path.rfind(p + ".", 0) == 0;
    if (inside) continue;
    auto layer = std::dynamic_pointer_cast<Layer>(m.second);
    if (!layer) continue;
    auto tuner = std::dynamic_pointer_cast<TunerLayer>(layer);
    if (tuner) wrapper_prefixes.push_back(path);
    auto mts = std::dynamic_pointer_cast<ModulesToSaveWrapper>(layer);
    // modules_to_save: plain suffix match, as PEFT does
    bool save = false;
    for (const auto & s : cfg.modules_to_save) save = save || ends_with(path, s);
    if (save) {
      PEFT_CHECK(!tuner || mts, "module '", path, "' is in modules_to_save but already holds adapter layers");
      save_targets.emplace_back(path, layer);
      continue;
    }
    if (mts) continue;
    LayerPtr plain = layer->base();
    const bool is_linear = std::dynamic_pointer_cast<Linear>(plain) != nullptr;
    if (!is_target(cfg, path, is_linear, path == "lm_head", defaults)) continue;
    PEFT_CHECK(method.supports(*plain), cfg.peft_type, " cannot adapt module '", path, "' (", plain->name(), ")");
    targets.emplace_back(path, layer);
  }
  if (targets.empty()) {
    std::string want = cfg.all_linear ? "all-linear" : cfg.target_regex ? *cfg.target_regex : "";
    for (const auto & t : cfg.target_list.empty() ? defaults : cfg.target_list) want += (want.empty() ? "" : ", ") + t;
    fail(str("target modules [", want, "] not found in the base model (", model_->config().arch_name(),
             "); check target_modules, exclude_modules and layers_to_transform"));
  }

  if (method.shared) {
    std::vector<LayerPtr> plain;
    for (const auto & t : targets) plain.push_back(t.second->base());
    method.shared(cfg, plain);
  }

  // 2. inject; on any error undo everything done so far
  std::vector<std::pair<std::string, LayerPtr>> replaced;              // path -> original layer
  std::vector<std::shared_ptr<TunerLayer>> extended;                    // existing layers given the adapter
  try {
    for (const auto & t : targets) {
      auto existing = std::dynamic_pointer_cast<TunerLayer>(t.second);
      auto out = method.inject(cfg, t.first, name, t.second);
      if (out == existing) {
        extended.push_back(existing);
      } else {
        replace_submodule(model_, t.first, out);
        replaced.emplace_back(t.first, t.second);
      }
    }
    for (const auto & t : save_targets) {
      auto w = std::dynamic_pointer_cast<ModulesToSaveWrapper>(t.second);
      if (!w) {
        w = std::make_shared<ModulesToSaveWrapper>(t.second);
        w->add_copy(name);
        replace_submodule(model_, t.first, w);
        replaced.emplace_back(t.first, t.second);
      } else {
        w->add_copy(name);
        extended.push_back(w);
      }
    }
  } catch (...) {
    for (auto & e : extended) {
      if (e->has_adapter(name)) e->delete_adapter(name);
    }
    for (auto it = replaced.rbegin(); it != replaced.rend(); ++it) replace_submodule(model_, it->first, it->second);
    model_->tie_weights();
    refresh_layers();
    throw;
  }
  for (auto & r : replaced) get_submodule(model_, r.first)->train(model_->is_training());
  configs_[name] = cfg;
  adapter_ids_[name] = g_next_adapter_id++;
  model_->tie_weights();
  refresh_layers();
  for (auto & l : layers_) {
    l.second->set_active(active_);
    l.second->set_disabled(disabled_);
  }
  ++version_;
  return replaced;
}

void PeftModel::add_adapter(const std::string & name, const AdapterConfig & cfg) {
  inject(name, cfg);
  refresh_trainable();
}

void PeftModel::load_adapter(const std::string & dir, const std::string & name, bool is_trainable) {
  AdapterConfig cfg = AdapterConfig::load(dir);
  cfg.inference_mode = !is_trainable;
  cfg.fields["inference_mode"] = !is_trainable;
  const std::string file = dir + "/adapter_model.safetensors";
  auto tensors = safetensors_load(file);  // read and validated before the model is touched
  auto wrapped = inject(name, cfg);
  try {
    // checkpoint key -> model tensor, for this adapter's tensors
    std::map<std::string, at::Tensor> want;
    for (const auto & l : layers_) {
      if (!l.second->has_adapter(name)) continue;
      for (const auto & p : l.second->adapter_parameters(name)) {
        want[checkpoint_key(l.first + "." + p.first, name)] = p.second;
      }
    }
    const AdapterConfig & loaded = configs_.at(name);
    if (loaded.shared_persistent) {
      for (const auto & kv : loaded.shared) want["base_model." + kv.first] = kv.second;
    }
    std::map<std::string, at::Tensor> params;
    for (const auto & p : model_->named_parameters(true)) params[p.key()] = p.value();
    std::vector<std::pair<at::Tensor, at::Tensor>> copies;
    std::set<std::string> seen;
    for (const auto & kv : tensors) {
      at::Tensor dst;
      auto it = want.find(kv.first);
      if (it != want.end()) {
        dst = it->second;
        seen.insert(kv.first);
      } else {
        // other keys (biases with bias="all", embedding base weights) address base-model tensors
        std::string path = kv.first.rfind(kPrefix, 0) == 0 ? kv.first.substr(kPrefix.size()) : kv.first;
        auto p = params.find(path);
        if (p == params.end()) p = params.find(path.substr(0, path.rfind('.')) + ".base_layer" + path.substr(path.rfind('.')));
        PEFT_CHECK(p != params.end(), file, ": key '", kv.first, "' matches no module of the model for adapter '", name,
                   "' (adapter for a different base model?)");
        dst = p->second;
      }
      PEFT_CHECK(kv.second.sizes() == dst.sizes(), file, ": tensor '", kv.first, "' has shape ", kv.second.sizes(),
                 ", the model expects ", dst.sizes(), " (adapter trained for a different base model or config?)");
      copies.emplace_back(dst, kv.second);
    }
    std::vector<std::string> missing;
    for (const auto & kv : want) {
      if (!seen.count(kv.first)) missing.push_back(kv.first);
    }
    PEFT_CHECK(missing.empty(), file, ": missing adapter tensors: ", missing.front(),
               missing.size() > 1 ? str(" (and ", missing.size() - 1, " more)") : "");
    at::NoGradGuard g;
    for (auto & c : copies) c.first.copy_(c.second);
  } catch (...) {
    // undo the injection completely: drop the adapter, unwrap the layers it wrapped
    delete_adapter(name);
    for (auto it = wrapped.rbegin(); it != wrapped.rend(); ++it) replace_submodule(model_, it->first, it->second);
    model_->tie_weights();
    refresh_layers();
    ++version_;
    throw;
  }
  refresh_trainable();
}

void PeftModel::hotswap_adapter(const std::string & dir, const std::string & name) {
  const AdapterConfig & old = adapter_config(name);
  AdapterConfig cfg = AdapterConfig::load(dir);
  PEFT_CHECK(cfg.peft_type == old.peft_type, dir, ": hot-swap needs the same method (", old.peft_type, "), got ",
             cfg.peft_type);
  for (const auto & l : layers_) {
    PEFT_CHECK(!l.second->has_adapter(name) ||
                   std::find(l.second->merged().begin(), l.second->merged().end(), name) == l.second->merged().end(),
               "adapter '", name, "' is merged; unmerge before hot-swapping");
  }
  const std::string file = dir + "/adapter_model.safetensors";
  auto tensors = safetensors_load(file);
  std::map<std::string, at::Tensor> want = adapter_state_dict(name);
  PEFT_CHECK(tensors.size() == want.size(), file, ": hot-swap needs the same tensors as adapter '", name, "' (",
             want.size(), "), the file has ", tensors.size());
  for (const auto & kv : want) {
    auto it = tensors.find(kv.first);
    PEFT_CHECK(it != tensors.end(), file, ": missing tensor '", kv.first, "' needed for hot-swap");
    // equal shapes, or smaller ones that fit a zero-padded (prepare_for_hotswap) tensor
    bool fits = it->second.dim() == kv.second.dim();
    for (int64_t d = 0; fits && d < kv.second.dim(); ++d) fits = it->second.size(d) <= kv.second.size(d);
    PEFT_CHECK(fits, file, ": tensor '", kv.first, "' has shape ", it->second.sizes(), ", adapter '", name, "' has ",
               kv.second.sizes(), " (hot-swap needs equal shapes, or prepare_for_hotswap with a larger rank)");
  }
  at::NoGradGuard g;
  for (auto & kv : want) {
    const at::Tensor & src = tensors.at(kv.first);
    if (src.sizes() == kv.second.sizes()) {
      kv.second.copy_(src);
      continue;
    }
    kv.second.zero_();
    at::Tensor dst = kv.second;
    for (int64_t d = 0; d < src.dim(); ++d) dst = dst.narrow(d, 0, src.size(d));
    dst.copy_(src);
  }
  for (auto & l : layers_) {
    if (l.second->has_adapter(name)) l.second->rescale(name, cfg, l.first, 1.0);
  }
  AdapterConfig kept = cfg;
  kept.inference_mode = old.inference_mode;
  kept.fields["inference_mode"] = old.inference_mode;
  configs_[name] = kept;
  // no version bump: the computation's structure is unchanged, only tensor values (read live)
}

void PeftModel::prepare_for_hotswap(int64_t rank) {
  PEFT_CHECK(rank > 0, "prepare_for_hotswap: rank must be > 0");
  PEFT_CHECK(!merged(), "prepare_for_hotswap: unmerge adapters first");
  for (auto & l : layers_) {
    for (const auto & n : l.second->adapter_names()) l.second->pad_rank(n, rank);
  }
  refresh_trainable();
  ++version_;  // new tensors: compiled graphs captured before must not be replayed
}

void PeftModel::set_scale(const std::string & name, double factor) {
  const AdapterConfig & cfg = adapter_config(name);
  for (auto & l : layers_) {
    if (l.second->has_adapter(name)) l.second->rescale(name, cfg, l.first, factor);
  }
}

void PeftModel::set_adapter(const std::vector<std::string> & names) {
  PEFT_CHECK(!names.empty(), "set_adapter needs at least one adapter name");
  for (const auto & n : names) PEFT_CHECK(configs_.count(n), "no adapter named '", n, "'");
  if (merged()) unmerge_adapter();  // PEFT unmerges (with a warning) before switching
  active_ = names;
  for (auto & l : layers_) l.second->set_active(active_);
  refresh_trainable();
  ++version_;
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

void PeftModel::delete_adapter(const std::string & name) {
  PEFT_CHECK(configs_.count(name), "no adapter named '", name, "'");
  for (auto & l : layers_) {
    PEFT_CHECK(std::find(l.second->merged().begin(), l.second->merged().end(), name) == l.second->merged().end(),
               "adapter '", name, "' is merged into '", l.first, "'; unmerge it before deleting");
  }
  for (auto & l : layers_) {
    if (l.second->has_adapter(name)) l.second->delete_adapter(name);
  }
  configs_.erase(name);
  adapter_ids_.erase(name);
  active_.erase(std::remove(active_.begin(), active_.end(), name), active_.end());
  if (active_.empty() && !configs_.empty()) active_ = {configs_.begin()->first};  // alphabetically first
  for (auto & l : layers_) l.second->set_active(active_);
  refresh_trainable();
  ++version_;
}

PeftModel::DisableGuard::DisableGuard(PeftModel & m) : m_(m), was_disabled_(m.disabled_) {
  m_.set_adapters_disabled(true);
}
PeftModel::DisableGuard::~DisableGuard() { m_.set_adapters_disabled(was_disabled_); }

void PeftModel::set_adapters_disabled(bool disabled) {
  if (disabled_ == disabled) return;
  disabled_ = disabled;
  for (auto & l : layers_) l.second->set_disabled(disabled);
  ++version_;
}

void PeftModel::merge_adapter(const std::vector<std::string> & names, bool safe_merge) {
  std::vector<std::string> which = names.empty() ? active_ : names;
  for (const auto & n : which) PEFT_CHECK(configs_.count(n), "no adapter named '", n, "'");
  // keep exact copies of what merging overwrites, so a refused (safe) merge restores bit-for-bit
  std::vector<std::pair<at::Tensor, at::Tensor>> saved;
  std::vector<std::pair<std::shared_ptr<TunerLayer>, std::vector<std::string>>> merged_before;
  for (auto & l : layers_) {
    merged_before.emplace_back(l.second, l.second->merged());
    if (!safe_merge) continue;  // only a safe merge pays for the copies
    for (auto & p : l.second->base_layer->parameters(true)) saved.emplace_back(p, p.clone());
  }
  try {
    for (auto & l : layers_) l.second->merge(which, safe_merge);
  } catch (...) {
    at::NoGradGuard g;
    for (auto & s : saved) s.first.copy_(s.second);
    if (safe_merge) {
      for (auto & mb : merged_before) mb.first->restore_merged(mb.second);
    } else {
      for (auto & mb : merged_before) {
        while (mb.first->merged().size() > mb.second.size()) mb.first->unmerge_last();
      }
    }
    ++version_;
    throw;
  }
  ++version_;
}

void PeftModel::unmerge_adapter() {
  for (auto & l : layers_) l.second->unmerge_all();
  ++version_;
}

bool PeftModel::merged() const {
  for (const auto & l : layers_) {
    if (!l.second->merged().empty()) return true;
  }
  return false;
}

std::shared_ptr<CausalLM> PeftModel::merge_and_unload(bool safe_merge, const std::vector<std::string> & names) {
  if (!disabled_) merge_adapter(names, safe_merge);
  // merged layers keep their merged base; wrappers hand over their active copy
  for (auto & l : layers_) {
    LayerPtr keep = l.second->base_layer;
    if (auto w = std::dynamic_pointer_cast<ModulesToSaveWrapper>(l.second)) keep = w->current();
    replace_submodule(model_, l.first, keep);
  }
  return release();
}

std::shared_ptr<CausalLM> PeftModel::unload() {
  for (auto & l : layers_) replace_submodule(model_, l.first, l.second->base_layer);
  return release();
}

std::shared_ptr<CausalLM> PeftModel::release() {
  layers_.clear();
  configs_.clear();
  adapter_ids_.clear();
  active_.clear();
  model_->tie_weights();
  ++version_;
  return model_;
}

std::string PeftModel::checkpoint_key(const std::string & path, const std::string & adapter) const {
  std::string p = path;
  const std::string mts = "modules_to_save." + adapter + ".";
  size_t pos = p.find(mts);
  if (pos != std::string::npos) {
    p.erase(pos, mts.size());
  } else if (ends_with(p, "." + adapter)) {
    p.erase(p.size() - adapter.size() - 1);
  } else if ((pos = p.rfind("." + adapter + ".")) != std::string::npos) {
    p.erase(pos, adapter.size() + 1);
  }
  if (ends_with(p, "lora_magnitude_vector.weight")) p.erase(p.size() - 7);  // PEFT stores DoRA's m without .weight
  return kPrefix + p;
}

std::map<std::string, at::Tensor> PeftModel::adapter_state_dict(const std::string & adapter) const {
  const AdapterConfig & cfg = adapter_config(adapter);
  std::map<std::string, at::Tensor> out;
  for (const auto & l : layers_) {
    if (!l.second->has_adapter(adapter)) continue;
    for (const auto & p : l.second->adapter_parameters(adapter)) {
      out[checkpoint_key(l.first + "." + p.first, adapter)] = p.second;
    }
  }
  if (cfg.shared_persistent) {
    for (const auto & kv : cfg.shared) out["base_model." + kv.first] = kv.second;
  }
  if (cfg.bias != "none") {
    const TunerMethod & m = tuner_method(cfg.peft_type);
    for (const auto & p : model_->named_parameters(true)) {
      if (!ends_with(p.key(), "bias") || p.key().find(m.prefix) != std::string::npos) continue;
      bool is_adapter_layer_bias = false;
      for (const auto & l : layers_) is_adapter_layer_bias = is_adapter_layer_bias || p.key() == l.first + ".base_layer.bias";
      if (cfg.bias == "all" || is_adapter_layer_bias) out[kPrefix + p.key()] = p.value();
    }
  }
  return out;
}

void PeftModel::save_pretrained(const std::string & dir, const std::vector<std::string> & selected) const {
  std::vector<std::string> names = selected.empty() ? adapter_names() : selected;
  ::mkdir(dir.c_str(), 0755);
  for (const auto & n : names) {
    const AdapterConfig & cfg = adapter_config(n);
    const std::string d = n == "default" ? dir : dir + "/" + n;
    ::mkdir(d.c_str(), 0755);
    nlohmann::json j = cfg.to_json();
    if (j["auto_mapping"].is_null() && j["task_type"].is_null()) {
      j["auto_mapping"] = {{"base_model_class", model_->config().arch_name()}, {"parent_library", "transformers"}};
    }
    safetensors_save(d + "/adapter_model.safetensors", adapter_state_dict(n));
    write_file_atomic(d + "/adapter_config.json", j.dump(2) + "\n");
  }
}

at::Tensor PeftModel::forward(const ForwardInput & in) {
  prepare_forward();
  if (in.adapter_names.empty()) return model_->forward(in);
  ForwardInput mixed = in;
  mixed.adapter_rows = mixed_rows(in.adapter_names, in.input_ids.size(0));
  const auto index = adapter_index();
  RoutingScope scope(mixed.adapter_rows, index);
  return model_->forward(mixed);
}

std::map<std::string, int64_t> PeftModel::adapter_index() const {
  std::map<std::string, int64_t> index;
  for (const auto & kv : configs_) index.emplace(kv.first, static_cast<int64_t>(index.size()));
  return index;
}

at::Tensor PeftModel::mixed_rows(const std::vector<std::string> & names, int64_t batch) const {
  PEFT_CHECK(!model_->is_training(), "mixed-adapter batches are for inference (the model is in training mode)");
  PEFT_CHECK(static_cast<int64_t>(names.size()) == batch, "adapter_names has ", names.size(), " entries for a batch of ",
             batch);
  PEFT_CHECK(!merged(), "mixed-adapter batches are not possible while adapters are merged");
  const auto index = adapter_index();
  at::Tensor rows = at::zeros({static_cast<int64_t>(index.size()), batch});
  for (int64_t b = 0; b < batch; ++b) {
    if (names[b] == "__base__") continue;
    auto it = index.find(names[b]);
    PEFT_CHECK(it != index.end(), "adapter_names[", b, "] = '", names[b], "' is not an adapter of the model (nor __base__)");
    rows[it->second][b] = 1.0;
  }
  return rows.to(model_->options().device());
}

void PeftModel::prepare_forward() {
  if (disabled_ && merged()) unmerge_adapter();
}

void PeftModel::refresh_trainable() {
  for (auto & p : model_->parameters(true)) p.set_requires_grad(false);
  for (const auto & a : active_) {
    const AdapterConfig & cfg = configs_.at(a);
    if (cfg.inference_mode) continue;
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
  return out;
}

std::string PeftModel::trainable_summary() const {
  int64_t trainable = 0, all = 0;
  for (const auto & p : named_parameters(*model_)) {
    all += p.second.numel();
    if (p.second.requires_grad()) trainable += p.second.numel();
  }
  char pct[32];
  std::snprintf(pct, sizeof(pct), "%.4f", all ? 100.0 * trainable / all : 0.0);
  return str("trainable params: ", trainable, " || all params: ", all, " || trainable%: ", pct);
}

const std::string & PeftModel::state_key() const {
  if (key_version_ != version_) {
    std::string k;
    for (const auto & kv : adapter_ids_) k += kv.first + "#" + std::to_string(kv.second) + ";";
    for (const auto & l : layers_) k += l.first + "=" + l.second->signature() + ";";
    key_ = std::move(k);
    key_version_ = version_;
  }
  return key_;
}

}  // namespace peft
