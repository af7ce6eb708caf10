// PeftModel: mixed-adapter batches (PEFT's adapter_names): which adapter each row runs, as the routing
// tensor that layers read through a RoutingScope (forward.cpp).
#include "peft/error.h"
#include "peft/peft-model.h"
#include "peft/tuners/routing.h"

namespace peft {

const char kBaseAdapter[] = "__base__";

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
  PEFT_CHECK(encoders_.empty(), "mixed-adapter batches cannot hold prompt-learning adapters (",
             configs_.begin()->second.peft_type, ")");
  if (mixed_version_ != state_->version()) {
    // each adapter's layers asked once per change of the adapters (a reload may differ: a new version)
    mixed_refused_.clear();
    for (const auto & l : layers_) {
      for (const auto & n : l.second->adapter_names()) {
        if (mixed_refused_.count(n)) continue;
        const std::string why = l.second->mixed_batch_refusal(n);
        if (!why.empty()) mixed_refused_.emplace(n, str(l.second->name(), " at '", l.first, "' cannot run in a mixed-adapter batch (", why, ")"));
      }
    }
    mixed_version_ = state_->version();
  }
  const auto index = adapter_index();
  at::Tensor rows = at::zeros({static_cast<int64_t>(index.size()), batch});
  for (int64_t b = 0; b < batch; ++b) {
    if (names[b] == kBaseAdapter) continue;
    auto it = index.find(names[b]);
    PEFT_CHECK(it != index.end(), "adapter_names[", b, "] = '", names[b], "' is not an adapter of the model (nor __base__)");
    auto refused = mixed_refused_.find(names[b]);
    PEFT_CHECK(refused == mixed_refused_.end(), "adapter_names[", b, "] = '", names[b], "': ", refused->second);
    rows[it->second][b] = 1.0;
  }
  return rows.to(model_->options().device());
}

}  // namespace peft
