// PeftModel: merging adapters into the base weights (safe merges restore every weight bit for bit on
// failure), unmerging, and unloading the adapter layers (merge_and_unload, unload).
#include "peft/error.h"
#include "peft/nn/layers.h"
#include "peft/peft-model.h"
#include "peft/tuners/modules-to-save.h"

namespace peft {

void PeftModel::merge_adapter(const std::vector<std::string> & names, bool safe_merge) {
  std::vector<std::string> which = names.empty() ? active_adapters() : names;
  // PEFT means to refuse this too (its check looks the option up among the adapter names, so it merges)
  PEFT_CHECK(!unreplicated_, "cannot merge: the model's layers are replicated (layer_replication of adapter '", replicated_by_,
             "'), and the copies of a layer share its base weight, so every copy's update would be added to all of ",
             "them; run the adapters unmerged (or unload() them)");
  for (const auto & n : which) {
    PEFT_CHECK(configs_.count(n), "no adapter named '", n, "'");
    PEFT_CHECK(!encoders_.count(n), "adapter '", n, "' (", configs_.at(n).peft_type,
               ") is prompt learning: its virtual tokens cannot be merged into weights (nor in PEFT); unload() drops it");
  }
  // keep exact copies of what merging overwrites, so a refused (safe) merge restores bit-for-bit
  std::vector<std::pair<at::Tensor, at::Tensor>> saved;
  std::vector<std::pair<std::shared_ptr<TunerLayer>, std::vector<std::string>>> merged_before;
  for (auto & l : layers_) {
    merged_before.emplace_back(l.second, l.second->merged());
    if (!safe_merge) continue;  // only a safe merge pays for the copies
    for (auto & p : l.second->base_layer()->parameters(true)) saved.emplace_back(p, p.clone());
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
    throw;
  }
}

void PeftModel::unmerge_adapter() {
  for (auto & l : layers_) l.second->unmerge_all();
}

bool PeftModel::merged() const {
  for (const auto & l : layers_) {
    if (!l.second->merged().empty()) return true;
  }
  return false;
}

std::shared_ptr<CausalLM> PeftModel::merge_and_unload(bool safe_merge, const std::vector<std::string> & names) {
  if (!adapters_disabled()) merge_adapter(names, safe_merge);
  return release();
}

std::shared_ptr<CausalLM> PeftModel::unload() { return release(); }

std::shared_ptr<CausalLM> PeftModel::release() {
  // adapter layers give way to their (merged) base layer; modules_to_save to the active adapter's copy,
  // merged or not (PEFT's unload_and_optionally_merge_module)
  for (auto & l : layers_) {
    LayerPtr keep = l.second->base_layer();
    if (auto w = std::dynamic_pointer_cast<ModulesToSaveWrapper>(l.second)) keep = w->active_copy();
    replace_submodule(model_, l.first, keep);
  }
  layers_.clear();
  while (!encoders_.empty()) remove_prompt_encoder(encoders_.begin()->first);
  configs_.clear();
  adapter_ids_.clear();
  state_->set_active({});
  // a trained copy of a tied embedding or head stays untied, as PEFT leaves it
  if (model_->config().tie_word_embeddings) {
    auto head = std::dynamic_pointer_cast<Linear>(model_->output_layer());
    auto emb = std::dynamic_pointer_cast<Embedding>(model_->input_embedding());
    if (head && emb && !head->weight.is_same(emb->weight)) model_->untie_weights();
  }
  model_->tie_weights();
  return model_;
}

}  // namespace peft
