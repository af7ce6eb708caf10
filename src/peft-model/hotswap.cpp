// PeftModel: replacing an adapter's weights in place (hot-swap), rank padding for it, set_scale. Tensors
// keep their identity and scales are live tensors, so compiled graphs stay valid.
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft-model/adapter-file.h"
#include "peft/peft-model.h"
#include "peft/tuners/prompt-learning.h"

namespace peft {

void PeftModel::hotswap_adapter(const std::string & dir, const std::string & name) {
  const AdapterConfig & old = adapter_config(name);
  AdapterConfig cfg = AdapterConfig::load(dir);
  PEFT_CHECK(cfg.peft_type == old.peft_type, dir, ": hot-swap needs the same method (", old.peft_type, "), got ",
             cfg.peft_type);
  for (const auto & l : layers_) {
    PEFT_CHECK(!l.second->is_merged(name), "adapter '", name, "' is merged; unmerge before hot-swapping");
  }
  PEFT_CHECK(!encoders_.count(name) || encoders_.at(name)->table_only(), "adapter '", name, "' (", old.peft_type,
             ") computes its prompts with an encoder: hot-swap needs it loaded for inference (a table)");
  const std::string file = dir + "/adapter_model.safetensors";
  auto tensors = safetensors_load(file);
  check_finite_file(file, tensors);
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
  kept.set_field("inference_mode", old.inference_mode);
  configs_[name] = kept;
  // no version bump: the computation's structure is unchanged, only tensor values (read live)
}

void PeftModel::prepare_for_hotswap(int64_t rank) {
  PEFT_CHECK(rank > 0, "prepare_for_hotswap: rank must be > 0");
  PEFT_CHECK(!merged(), "prepare_for_hotswap: unmerge adapters first");
  for (auto & l : layers_) {
    for (const auto & n : l.second->adapter_names()) l.second->pad_rank(n, rank);
  }
  refresh_trainable();  // the layers moved the version: graphs captured with the old tensors are not replayed
}

void PeftModel::set_scale(const std::string & name, double factor) {
  const AdapterConfig & cfg = adapter_config(name);
  for (auto & l : layers_) {
    if (l.second->has_adapter(name)) l.second->rescale(name, cfg, l.first, factor);
  }
}

}  // namespace peft
