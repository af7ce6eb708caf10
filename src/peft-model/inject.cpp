// PeftModel: injecting an adapter (PEFT's inject_adapter): targets decided before the model is touched,
// then every target wrapped or extended, with a full rollback on any error.
#include <algorithm>
#include <atomic>
#include <iostream>

#include "peft/error.h"
#include "peft/util/text.h"
#include "peft/nn/layers.h"
#include "peft/peft-model.h"
#include "peft/quant/quantized-embedding.h"
#include "peft/tuners/modules-to-save.h"
#include "peft/tuners/registry.h"
#include "peft/tuners/targeting.h"
#include "tuners/trainable-tokens/trainable-tokens.h"

namespace peft {

namespace {

// a tied model's quantized embedding (--quantize-skip without lm_head) holds no float table to adapt, train or
// copy: refused by name, with the way out
void check_not_quantized_embedding(const LayerPtr & layer, const std::string & path, const std::string & what) {
  PEFT_CHECK(!std::dynamic_pointer_cast<quant::QuantizedEmbedding>(layer->base()), what, " cannot adapt '", path,
             "': it is a quantized embedding (it reads the tied output layer's quantized matrix: --quantize-skip ",
             "without lm_head on a model with tie_word_embeddings); keep lm_head in float (--quantize-skip lm_head, ",
             "the default) to adapt the embedding");
}

std::atomic<uint64_t> g_next_adapter_id{1};

// modules_to_save: wrap each of `save_targets` (or give its wrapper a copy for `name`); `kept_when_disabled`: the
// copies stay in place in the disable scope (prompt learning). What it did goes into replaced / extended.
void wrap_save_targets(const std::shared_ptr<CausalLM> & model, const std::vector<std::pair<std::string, LayerPtr>> & save_targets,
                       const std::string & name, bool kept_when_disabled,
                       std::vector<std::pair<std::string, LayerPtr>> & replaced,
                       std::vector<std::shared_ptr<TunerLayer>> & extended) {
  for (const auto & t : save_targets) {
    auto w = std::dynamic_pointer_cast<ModulesToSaveWrapper>(t.second);
    if (!w) {
      w = std::make_shared<ModulesToSaveWrapper>(t.second);
      w->add_copy(name, kept_when_disabled);
      replace_submodule(model, t.first, w);
      replaced.emplace_back(t.first, t.second);
    } else {
      w->add_copy(name, kept_when_disabled);
      extended.push_back(w);
    }
  }
}

}  // namespace

// The path of `layer` in the model.
std::string PeftModel::path_of(const LayerPtr & layer) const {
  for (const auto & m : named_modules(model_)) {
    if (std::dynamic_pointer_cast<Layer>(m.second) == layer) return m.first;
  }
  fail("internal: a layer of the model has no path");
}

std::vector<std::pair<std::string, LayerPtr>> PeftModel::inject(const std::string & name, const AdapterConfig & cfg_in) {
  AdapterConfig cfg = cfg_in;
  const Architecture * arch = find_architecture(model_->config().model_type);
  if (const auto complete = tuner_method(cfg.peft_type).complete) complete(cfg, arch ? &arch->targets : nullptr);
  check_adapter_name(name);
  PEFT_CHECK(!configs_.count(name), "an adapter named '", name, "' exists already");
  for (const auto & kv : configs_) {
    PEFT_CHECK(kv.second.peft_type == cfg.peft_type, "adapter '", name, "' is ", cfg.peft_type, " but '", kv.first,
               "' is ", kv.second.peft_type, " (one model holds adapters of one method)");
    PEFT_CHECK(cfg.bias == "none" || kv.second.bias == "none", "only one adapter may train biases (bias != \"none\")");
  }
  const TunerMethod & method = tuner_method(cfg.peft_type);
  // layer_replication (PEFT's _prepare_model): the layer stack is replicated before the first adapter
  // goes in; undone if this injection fails
  const LayerMap layer_map = method.layer_map ? method.layer_map(cfg) : LayerMap{};
  if (!layer_map.empty()) {
    PEFT_CHECK(!unreplicated_, "adapter '", name, "': layer_replication, but the layers were replicated already (by adapter '",
               replicated_by_, "'); replicating the replicated stack again is refused");
    PEFT_CHECK(configs_.empty(), "adapter '", name, "': layer_replication rebuilds the layer stack, so it must come with ",
               "the model's first adapter (", configs_.begin()->first, " exists)");
    auto replicated = replicate_layers(model_, layer_map);
    unreplicated_ = model_;
    model_ = replicated;
    replicated_by_ = name;
  }
  try {
    return inject_into_layers(name, cfg, method);
  } catch (...) {
    undo_replication(name);
    throw;
  }
}

void PeftModel::undo_replication(const std::string & name) {
  if (!unreplicated_ || replicated_by_ != name) return;
  model_ = unreplicated_;
  unreplicated_.reset();
  replicated_by_.clear();
  refresh_layers();
}

std::vector<std::pair<std::string, LayerPtr>> PeftModel::inject_into_layers(const std::string & name, AdapterConfig cfg,
                                                                             const TunerMethod & method) {
  if (method.prompt_encoder) {  // prompt learning: an encoder, and no layer is adapted
    add_prompt_encoder(name, cfg, method);
    // modules_to_save (PEFT's set_additional_trainable_modules): copies trained beside the encoder, by suffix;
    // PEFT's disable scope for prompt learning only swaps the model's forward, so they stay in place there
    std::vector<std::pair<std::string, LayerPtr>> save_targets, replaced;
    std::vector<std::shared_ptr<TunerLayer>> extended;
    std::vector<std::string> wrappers;
    for (const auto & m : named_modules(model_)) {
      bool inside = false;
      for (const auto & p : wrappers) inside = inside || m.first.rfind(p + ".", 0) == 0;
      auto layer = std::dynamic_pointer_cast<Layer>(m.second);
      if (m.first.empty() || inside || !layer) continue;
      auto tuner = std::dynamic_pointer_cast<TunerLayer>(layer);
      if (tuner) wrappers.push_back(m.first);
      bool save = false;
      for (const auto & s : cfg.modules_to_save) save = save || ends_with(m.first, s);
      if (save) save_targets.emplace_back(m.first, layer);
    }
    try {
      wrap_save_targets(model_, save_targets, name, true, replaced, extended);
    } catch (...) {
      for (auto & e : extended) {
        if (e->has_adapter(name)) e->delete_adapter(name);
      }
      for (auto it = replaced.rbegin(); it != replaced.rend(); ++it) replace_submodule(model_, it->first, it->second);
      model_->tie_weights();
      refresh_layers();
      remove_prompt_encoder(name);
      configs_.erase(name);
      throw;
    }
    for (auto & r : replaced) get_submodule(model_, r.first)->train(model_->is_training());
    adapter_ids_[name] = g_next_adapter_id++;
    model_->tie_weights();
    refresh_layers();
    state_->touch();
    return replaced;
  }
  const auto defaults = default_targets(method, model_->config().model_type);
  PEFT_CHECK(cfg.all_linear || cfg.target_regex || !cfg.target_list.empty() || !defaults.empty() ||
                 !cfg.modules_to_save.empty() || !cfg.target_parameters.empty(),
             "no target_modules given and ", cfg.peft_type, " has no default for model_type '",
             model_->config().model_type, "'");
  if (!cfg.all_linear && !cfg.target_regex && cfg.target_list.empty() && !defaults.empty() && cfg.target_parameters.empty()) {
    cfg.set_field("target_modules", defaults);  // as PEFT, the defaults are written into the adapter's config
  }

  // 1. decide targets without touching the model
  std::vector<std::pair<std::string, LayerPtr>> targets;
  std::vector<std::pair<std::string, LayerPtr>> save_targets;
  std::vector<std::string> wrapper_prefixes;
  // trainable_token_indices: module path -> rows (suffix match, as PEFT; the list form: the input embedding)
  std::vector<std::pair<std::string, std::vector<int64_t>>> token_targets;
  std::vector<bool> token_found(cfg.trainable_tokens.size(), false);
  // target_modules list entries that name no layer of the model (a typo: "q_prj"), named below
  std::vector<bool> entry_found(cfg.target_list.size(), false);
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
    for (size_t i = 0; i < cfg.target_list.size(); ++i) {
      const std::string & e = cfg.target_list[i];
      entry_found[i] = entry_found[i] || path == e || ends_with(path, "." + e);
    }
    for (size_t i = 0; i < cfg.trainable_tokens.size(); ++i) {
      const auto & tt = cfg.trainable_tokens[i];
      const bool hit = tt.first.empty() ? layer == model_->input_embedding()
                                        : path == tt.first || ends_with(path, "." + tt.first);
      if (!hit) continue;
      check_not_quantized_embedding(layer, path, "trainable tokens");
      token_targets.emplace_back(path, tt.second);
      token_found[i] = true;
    }
    auto mts = std::dynamic_pointer_cast<ModulesToSaveWrapper>(layer);
    // modules_to_save: plain suffix match, as PEFT does
    bool save = false;
    for (const auto & s : cfg.modules_to_save) save = save || ends_with(path, s);
    if (save) {
      PEFT_CHECK(!tuner || mts, "module '", path, "' is in modules_to_save but already holds adapter layers");
      check_not_quantized_embedding(layer, path, "modules_to_save");
      save_targets.emplace_back(path, layer);
      continue;
    }
    if (mts) continue;
    LayerPtr plain = layer->base();
    const bool is_linear = std::dynamic_pointer_cast<LinearBase>(plain) != nullptr;
    if (!is_target(cfg, path, is_linear, path == "lm_head", defaults)) continue;
    check_not_quantized_embedding(plain, path, cfg.peft_type);
    PEFT_CHECK(method.supports(*plain), cfg.peft_type, " cannot adapt module '", path, "' (", plain->name(), ")");
    PEFT_CHECK(method.conv1d || !std::dynamic_pointer_cast<Conv1D>(plain), cfg.peft_type, " on module '", path,
               "', a Conv1D layer (GPT-2), is not supported yet (LoRA and IA3 are)");
    targets.emplace_back(path, layer);
  }
  if (targets.empty()) {
    std::string want = cfg.all_linear ? "all-linear" : cfg.target_regex ? *cfg.target_regex : "";
    for (const auto & t : cfg.target_list.empty() && cfg.target_parameters.empty() ? defaults : cfg.target_list) {
      want += (want.empty() ? "" : ", ") + t;
    }
    for (const auto & t : cfg.target_parameters) want += (want.empty() ? "" : ", ") + t;
    fail(str("target modules [", want, "] not found in the base model (", model_->config().arch_name(),
             "); check target_modules, exclude_modules and layers_to_transform (`peft info --modules` lists the names)"));
  }
  {
    // some entries matched, others name nothing: PEFT adapts what matched and says nothing; a warning names them
    std::string unmatched;
    for (size_t i = 0; i < cfg.target_list.size(); ++i) {
      if (!entry_found[i]) unmatched += (unmatched.empty() ? "" : ", ") + cfg.target_list[i];
    }
    if (!unmatched.empty()) {
      std::cerr << "peft: warning: adapter '" << name << "': target_modules [" << unmatched
                << "] match no module of the base model (" << model_->config().arch_name() << "); only the "
                << targets.size() << " module(s) the other entries match are adapted (`peft info --modules` lists the names)\n";
    }
  }

  for (size_t i = 0; i < cfg.trainable_tokens.size(); ++i) {
    PEFT_CHECK(token_found[i], "trainable_token_indices: module '", cfg.trainable_tokens[i].first,
               "' not found in the base model");
  }

  // the whole adapter's memory, summed over its targets before anything is allocated (a check per layer
  // let r = 1000000 on every linear layer grow until the kernel killed the process)
  {
    std::vector<std::pair<std::string, const Layer *>> sized;
    for (const auto & t : targets) sized.emplace_back(t.first, t.second->base().get());
    check_adapter_memory(method, cfg, name, sized);
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
    for (const auto & t : token_targets) {
      const LayerPtr now = std::dynamic_pointer_cast<Layer>(get_submodule(model_, t.first));
      auto existing = std::dynamic_pointer_cast<TunerLayer>(now);
      auto out = add_trainable_tokens(now, name, t.second);
      if (out == existing) {
        extended.push_back(existing);
      } else {
        replace_submodule(model_, t.first, out);
        replaced.emplace_back(t.first, now);
      }
    }
    // an output layer tied to an adapted input embedding follows the embedding's adapter (the method's
    // own rule, or trainable tokens of trainable_token_indices)
    const auto tied = method.tied ? method.tied : cfg.trainable_tokens.empty() ? nullptr : &follow_trainable_tokens;
    if (tied && model_->config().tie_word_embeddings) {
      auto emb = std::dynamic_pointer_cast<TunerLayer>(model_->input_embedding());
      if (emb && emb->has_adapter(name)) {
        const LayerPtr head = model_->output_layer();
        const std::string path = path_of(head);
        auto existing = std::dynamic_pointer_cast<TunerLayer>(head);
        auto out = tied(name, head, emb);
        if (out == existing) {
          extended.push_back(existing);
        } else {
          replace_submodule(model_, path, out);
          replaced.emplace_back(path, head);
        }
      }
    }
    wrap_save_targets(model_, save_targets, name, false, replaced, extended);
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
  state_->touch();
  return replaced;
}

void PeftModel::add_adapter(const std::string & name, const AdapterConfig & cfg) {
  inject(name, cfg);
  refresh_trainable();
}

}  // namespace peft
