// AdaLoRA (PEFT §2.3) on Linear: an SVD-shaped LoRA, dW = B (A * E) * s / (ranknum + 1e-5) with
// s = lora_alpha (or r when alpha <= 0) and ranknum = init_r. A (R, I), E (R, 1), B (O, R).
// Inference, merging, PEFT-format load/save (with truncated ranks from rank_pattern) and training of
// A, E, B are supported; the rank allocator (budget schedule, pruning of E) is not implemented yet.
#pragma once
#include <map>

#include "peft/nn/layers.h"
#include "peft/tuners/lora.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

/// An ADALORA config's options, parsed once: LoRA's fields plus the rank budget.
struct AdaLoraOptions : MethodOptions {
  LoraOptions lora;  // r, lora_alpha, lora_dropout, init_lora_weights (rank_pattern is AdaLoRA's own)
  int64_t init_r = 12, target_r = 8, tinit = 0, tfinal = 0, delta_t = 1, total_step = 0;
  double beta1 = 0.85, beta2 = 0.85, orth_reg_weight = 0.5;
  std::map<std::string, int64_t> kept_rank;  // a saved rank_pattern: "<path>.lora_E" -> ranks kept
};

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
