// LayerNorm tuning (PEFT §2.6): a trainable deep copy of a (norm) layer per adapter, kept as
// "ln_tuning_layers.<adapter>"; forward runs the active adapter's copy (one active at most). Merging
// swaps the copy's values into the base layer; unmerging swaps them back.
#pragma once
#include <map>

#include "peft/tuners/tuner-layer.h"

namespace peft {

class LNTuningLayer : public TunerLayer {
 public:
  explicit LNTuningLayer(LayerPtr base);
  void add_adapter(const std::string & name);

  std::string adapter_signature(const std::string &) const override { return "copy"; }

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  at::Tensor forward_active(const at::Tensor & x) override;

 private:
  void swap_values(const std::string & name);
  std::shared_ptr<torch::nn::Module> holder_;  // "ln_tuning_layers"
  std::map<std::string, LayerPtr> copies_;
};

}  // namespace peft
