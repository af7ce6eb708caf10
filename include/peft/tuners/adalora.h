// AdaLoRA (PEFT §2.3) on Linear: an SVD-shaped LoRA, dW = B (A * E) * s / (ranknum + 1e-5) with
// s = lora_alpha (or r when alpha <= 0) and ranknum = init_r. A (R, I), E (R, 1), B (O, R).
// Inference, merging, PEFT-format load/save (with truncated ranks from rank_pattern) and training of
// A, E, B are supported; the rank allocator (budget schedule, pruning of E) is not implemented yet.
#pragma once
#include <map>

#include "peft/nn/layers.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

class AdaLoraLinear : public TunerLayer {
 public:
  explicit AdaLoraLinear(LayerPtr base);
  void add_adapter(const std::string & name, int64_t r, int64_t init_r, double alpha, double dropout, bool init_default);

  std::string adapter_signature(const std::string & name) const override;

  at::Tensor delta_weight(const std::string & name) const;  // (O, I)
  LinearBase & linear() const { return static_cast<LinearBase &>(*base_layer_); }

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  at::Tensor forward_active(const at::Tensor & x) override;

 private:
  std::map<std::string, double> dropout_;
  AdapterDict *A_, *E_, *B_;
};

}  // namespace peft
