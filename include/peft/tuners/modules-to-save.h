// modules_to_save (PEFT §3.8): a whole module trained as a copy per adapter. The wrapper keeps the
// frozen original as "original_module" and the copies as "modules_to_save.<adapter>"; forward uses the
// active adapter's copy, or the original when disabled or when no active adapter owns a copy. A prompt-
// learning adapter's copy stays in place when disabled (PEFT's disable_adapter for prompt learning only swaps
// the model's forward).
#pragma once
#include <set>

#include "peft/tuners/tuner-layer.h"

namespace peft {

class ModulesToSaveWrapper : public TunerLayer {
 public:
  explicit ModulesToSaveWrapper(LayerPtr original);
  /// `kept_when_disabled`: the copy stays in place in the disable scope (a prompt-learning adapter's).
  void add_copy(const std::string & adapter, bool kept_when_disabled = false);

  std::string adapter_signature(const std::string & a) const override {
    return kept_.count(a) ? "copy,kept_when_disabled" : "copy";
  }
  std::string mixed_batch_refusal(const std::string &) const override { return ""; }

  /// The copy replaces the module: "merging" changes nothing, so forward always uses current().
  at::Tensor forward(const at::Tensor & x) override;
  /// The module forward would use now (the active copy or the original).
  LayerPtr current() const;
  /// The copy of the active adapter that has one, or the original when none does, ignoring the disable
  /// scope (what merge_and_unload and unload leave in the module's place, as PEFT does).
  LayerPtr active_copy() const;
  LayerPtr copy(const std::string & adapter) const { return copies_.at(adapter); }

 protected:
  void merge_one(const std::string &, bool) override {}  // nothing to fold: the copy replaces the module
  void unmerge_one(const std::string &) override {}
  void forget(const std::string & name) override;
  at::Tensor forward_active(const at::Tensor & x) override { return current()->forward(x); }
  at::Tensor forward_mixed(const at::Tensor & x) override;

 private:
  std::shared_ptr<torch::nn::Module> holder_;  // "modules_to_save"
  std::map<std::string, LayerPtr> copies_;
  std::set<std::string> kept_;  // adapters whose copies stay in place when disabled
};

}  // namespace peft
