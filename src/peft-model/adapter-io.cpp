// PeftModel and PEFT's files: load_adapter (validated before the model is touched, undone on any error),
// adapter_state_dict with PEFT's checkpoint keys, save_pretrained.
#include <iostream>
#include <set>

#include "peft/error.h"
#include "peft/util/text.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/model/name-or-path.h"
#include "peft/peft-model.h"
#include "peft-model/adapter-file.h"
#include "peft/tuners/prompt-learning.h"
#include "peft/tuners/registry.h"

namespace peft {

namespace {

const std::string kPrefix = "base_model.model.";

}  // namespace

void check_finite_file(const std::string & file, const std::map<std::string, at::Tensor> & tensors) {
  for (const auto & kv : tensors) {
    const at::Tensor & t = kv.second;
    if (!at::isFloatingType(t.scalar_type())) continue;
    const at::Tensor bad = at::logical_not(at::isfinite(t)).reshape({-1});
    if (!bad.any().item<bool>()) continue;
    const int64_t nan = at::isnan(t).sum().item<int64_t>(), inf = bad.sum().item<int64_t>() - nan;
    std::vector<int64_t> index(static_cast<size_t>(t.dim()));  // the first non-finite value's index
    int64_t rest = bad.nonzero()[0][0].item<int64_t>();
    for (int64_t d = t.dim() - 1; d >= 0; --d) index[d] = rest % t.size(d), rest /= t.size(d);
    fail(peft::str(file, ": tensor '", kv.first, "' holds non-finite values (", nan, " NaN, ", inf, " Inf; the first at ",
             at::IntArrayRef(index), "); refusing to load it, as saving refuses it"));
  }
}

void PeftModel::load_adapter(const std::string & dir, const std::string & name, bool is_trainable,
                             bool allow_base_weights) {
  AdapterConfig cfg = AdapterConfig::load(dir);
  cfg.set_field("inference_mode", !is_trainable);
  const std::string file = dir + "/adapter_model.safetensors";
  auto tensors = safetensors_load(file);  // read and validated before the model is touched
  check_finite_file(file, tensors);       // as save_pretrained refuses them
  if (auto from_file = tuner_method(cfg.peft_type).from_file) from_file(cfg, file, tensors);
  auto wrapped = inject(name, cfg);
  if (encoders_.count(name)) {  // prompt learning: the file holds the encoder's output, "prompt_embeddings"
    try {
      auto enc = encoders_.at(name);
      PEFT_CHECK(enc->table_only(), dir, ": a ", cfg.peft_type, " adapter whose encoder is more than its table ",
                 "cannot be loaded trainable: the file holds the encoder's output (PEFT would run it through a new ",
                 "random encoder); load it for inference");
      auto it = tensors.find("prompt_embeddings");
      PEFT_CHECK(it != tensors.end(), file, ": missing tensor 'prompt_embeddings'");
      PEFT_CHECK(it->second.sizes() == enc->table.sizes(), file, ": tensor 'prompt_embeddings' has shape ",
                 it->second.sizes(), ", the model expects ", enc->table.sizes(), " (an adapter for another model?)");
      // modules_to_save: the copies under "base_model.<module>.<tensor>" (PEFT's keys for prompt learning)
      std::map<std::string, at::Tensor> want = prompt_copies(name);
      std::vector<std::pair<at::Tensor, at::Tensor>> copies = {{enc->table, it->second}};
      for (const auto & kv : tensors) {
        if (kv.first == "prompt_embeddings") continue;
        auto w = want.find(kv.first);
        PEFT_CHECK(w != want.end(), file, ": unexpected tensor '", kv.first, "' in a ", cfg.peft_type, " adapter (it holds ",
                   "'prompt_embeddings' and the copies of its modules_to_save only)");
        PEFT_CHECK(kv.second.sizes() == w->second.sizes(), file, ": tensor '", kv.first, "' has shape ", kv.second.sizes(),
                   ", the model expects ", w->second.sizes(), " (an adapter for another model?)");
        copies.emplace_back(w->second, kv.second);
        want.erase(w);
      }
      PEFT_CHECK(want.empty(), file, ": missing tensor '", want.empty() ? "" : want.begin()->first,
                 "' (a copy of a module in modules_to_save)");
      at::NoGradGuard g;
      for (auto & c : copies) c.first.copy_(c.second);
    } catch (...) {
      delete_adapter(name);
      for (auto it = wrapped.rbegin(); it != wrapped.rend(); ++it) replace_submodule(model_, it->first, it->second);
      model_->tie_weights();
      refresh_layers();
      state_->touch();
      throw;
    }
    refresh_trainable();
    return;
  }
  try {
    // checkpoint key -> model tensor, for this adapter's tensors
    std::map<std::string, at::Tensor> want;
    for (const auto & l : layers_) {
      if (!l.second->has_adapter(name)) continue;
      for (const auto & p : l.second->adapter_parameters(name)) {
        want[checkpoint_key(l.first + "." + p.first, name)] = p.second;
      }
      for (const auto & p : l.second->adapter_buffers(name)) want[checkpoint_key(l.first + "." + p.first, name)] = p.second;
    }
    const AdapterConfig & loaded = configs_.at(name);
    if (loaded.shared_persistent) {
      for (const auto & kv : loaded.shared) want["base_model." + kv.first] = kv.second;
    }
    std::map<std::string, at::Tensor> params;
    for (const auto & p : model_->named_parameters(true)) params[p.key()] = p.value();
    // PEFT's save_embedding_layers ("auto" when an embedding layer is among the targets) writes the base weight of
    // the input embedding and of the output layer, each where some adapter of the saved model adapts it, as
    // "<module>.base_layer.weight". PEFT's load copies such a key where the model has that tensor now and ignores
    // it where it does not (the module is not adapted), without a word.
    std::set<std::string> embedding_keys;
    const LayerPtr input = model_->input_embedding(), output = model_->output_layer();
    for (const auto & m : named_modules(model_)) {
      const auto l = std::dynamic_pointer_cast<Layer>(m.second);
      if (l && (l == input || l == output)) embedding_keys.insert(m.first + ".base_layer.weight");
    }
    std::vector<std::pair<at::Tensor, at::Tensor>> copies;
    std::vector<std::string> changed_embeddings;
    std::set<std::string> seen;
    for (const auto & kv : tensors) {
      at::Tensor dst;
      auto it = want.find(kv.first);
      const std::string path = kv.first.rfind(kPrefix, 0) == 0 ? kv.first.substr(kPrefix.size()) : kv.first;
      if (it != want.end()) {
        dst = it->second;
        seen.insert(kv.first);
      } else if (kv.first.rfind(kPrefix, 0) == 0 && embedding_keys.count(path)) {
        auto p = params.find(path);
        if (p == params.end()) continue;  // not adapted now: PEFT ignores the key
        PEFT_CHECK(kv.second.sizes() == p->second.sizes(), file, ": tensor '", kv.first, "' has shape ",
                   kv.second.sizes(), ", the model's base weight '", path, "' has ", p->second.sizes(),
                   " (an adapter for a model with another vocabulary?)");
        if (at::equal(kv.second.to(p->second.options()), p->second)) continue;  // the base's own weight: nothing to do
        changed_embeddings.push_back(kv.first);
        dst = p->second;
      } else {
        // other keys address base-model tensors: biases trained with a bias mode; anything else only
        // when asked for (an adapter file that overwrites base weights is almost always a mistake)
        auto p = params.find(path);
        if (p == params.end()) p = params.find(path.substr(0, path.rfind('.')) + ".base_layer" + path.substr(path.rfind('.')));
        PEFT_CHECK(p != params.end(), file, ": key '", kv.first, "' matches no module of the model for adapter '", name,
                   "' (adapter for a different base model?)");
        const bool bias = loaded.bias != "none" && ends_with(p->first, ".bias");
        PEFT_CHECK(bias || allow_base_weights, file, ": key '", kv.first, "' names a base-model weight ('", p->first,
                   "'), not a tensor of adapter '", name, "'", loaded.bias == "none" && ends_with(p->first, ".bias")
                       ? " (a bias, but the adapter's config has bias \"none\")" : "",
                   "; refusing to overwrite it (allow_base_weights / --allow-base-weights to load it anyway)");
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
    for (const auto & l : layers_) {
      if (l.second->has_adapter(name)) l.second->check_loaded(name, file);
    }
    for (const auto & k : changed_embeddings) {
      std::cerr << "peft: " << file << ": '" << k << "' (the base embedding weight PEFT's save_embedding_layers "
                << "writes) differs from the model's; loaded it into the base model, as PEFT does\n";
    }
  } catch (...) {
    // undo the injection completely: drop the adapter, unwrap the layers it wrapped
    delete_adapter(name);
    for (auto it = wrapped.rbegin(); it != wrapped.rend(); ++it) replace_submodule(model_, it->first, it->second);
    model_->tie_weights();
    refresh_layers();
    undo_replication(name);
    state_->touch();
    throw;
  }
  refresh_trainable();
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

std::map<std::string, at::Tensor> PeftModel::prompt_copies(const std::string & adapter) const {
  // PEFT's keys for a prompt-learning model hold "base_model." and the module's path in the model
  std::map<std::string, at::Tensor> out;
  for (const auto & l : layers_) {
    if (!l.second->has_adapter(adapter)) continue;
    for (const auto & p : l.second->adapter_parameters(adapter)) {
      out["base_model." + checkpoint_key(l.first + "." + p.first, adapter).substr(kPrefix.size())] = p.second;
    }
  }
  return out;
}

std::map<std::string, at::Tensor> PeftModel::adapter_state_dict(const std::string & adapter) const {
  const AdapterConfig & cfg = adapter_config(adapter);
  std::map<std::string, at::Tensor> out;
  if (auto e = encoders_.find(adapter); e != encoders_.end()) {
    // PEFT: the encoder's output (the table itself when that is all the encoder is), and modules_to_save's copies
    at::NoGradGuard g;
    out = prompt_copies(adapter);
    out["prompt_embeddings"] = e->second->table_only() ? e->second->table : e->second->prompts().contiguous();
    return out;
  }
  for (const auto & l : layers_) {
    if (!l.second->has_adapter(adapter)) continue;
    for (const auto & p : l.second->adapter_parameters(adapter)) {
      out[checkpoint_key(l.first + "." + p.first, adapter)] = p.second;
    }
    for (const auto & p : l.second->adapter_buffers(adapter)) out[checkpoint_key(l.first + "." + p.first, adapter)] = p.second;
  }
  if (cfg.shared_persistent) {
    for (const auto & kv : cfg.shared) out["base_model." + kv.first] = kv.second;
  }
  if (cfg.bias != "none") {
    const MethodSchema & m = *cfg.method;
    for (const auto & p : model_->named_parameters(true)) {
      if (!ends_with(p.key(), "bias") || p.key().find(m.prefix) != std::string::npos) continue;
      bool is_adapter_layer_bias = false;
      for (const auto & l : layers_) is_adapter_layer_bias = is_adapter_layer_bias || p.key() == l.first + ".base_layer.bias";
      if (cfg.bias == "all" || is_adapter_layer_bias) out[kPrefix + p.key()] = p.value();
    }
  }
  return out;
}

void PeftModel::save_pretrained(const std::string & dir, const std::vector<std::string> & selected,
                                bool allow_nonfinite) const {
  FolderWriter w(dir);
  save_pretrained(w, selected, allow_nonfinite);
  w.commit();
}

void PeftModel::save_pretrained(FolderWriter & w, const std::vector<std::string> & selected,
                                bool allow_nonfinite) const {
  std::vector<std::string> names = selected.empty() ? adapter_names() : selected;
  std::vector<std::pair<std::string, std::map<std::string, at::Tensor>>> tensors;
  for (const auto & n : names) {
    tensors.emplace_back(n, adapter_state_dict(n));
    const AdapterConfig & cfg = adapter_config(n);
    if (auto to_file = tuner_method(cfg.peft_type).to_file) to_file(cfg, tensors.back().second);
    if (allow_nonfinite) continue;
    for (const auto & kv : tensors.back().second) {
      PEFT_CHECK(at::isfinite(kv.second).all().item<bool>(), "adapter '", n, "': tensor '", kv.first,
                 "' holds NaN or Inf values; not saved (allow_nonfinite / --allow-nonfinite to save it anyway)");
    }
  }
  for (const auto & t : tensors) {
    const std::string & n = t.first;
    const std::string sub = n == "default" ? "" : n + "/";
    nlohmann::json j = adapter_config(n).to_json();
    if (j["auto_mapping"].is_null() && j["task_type"].is_null()) {
      j["auto_mapping"] = {{"base_model_class", model_->config().arch_name()}, {"parent_library", "transformers"}};
    }
    // upstream's save_pretrained: the base model's name_or_path where the config has none
    if (!j.contains("base_model_name_or_path") || j["base_model_name_or_path"].is_null()) {
      const std::string name = model_name_or_path(unreplicated_ ? *unreplicated_ : *model_);  // (layer_replication: the given model)
      if (!name.empty()) j["base_model_name_or_path"] = name;
    }
    safetensors_save(w.file(sub + "adapter_model.safetensors"), t.second);
    write_file_atomic(w.file(sub + "adapter_config.json"), j.dump(2) + "\n");
  }
}


}  // namespace peft
