// AdaLoRA (PEFT §2.3) on Linear: an SVD-shaped LoRA, dW = B (A * E) * s / (ranknum + 1e-5) with
// s = lora_alpha (or r when alpha <= 0) and ranknum = init_r. A (R, I), E (R, 1), B (O, R).
// Inference, merging, PEFT-format load/save (with truncated ranks from rank_pattern), training of A, E, B
// and the rank allocator (AdaLoraAllocator, src/tuners/adalora-allocator.cpp) are supported.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

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
  /// Adapter `name`'s factors (the parameters themselves): A (R, I), E (R, 1), B (O, R).
  at::Tensor lora_A(const std::string & name) const { return A_->get(name); }
  at::Tensor lora_E(const std::string & name) const { return E_->get(name); }
  at::Tensor lora_B(const std::string & name) const { return B_->get(name); }

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  at::Tensor forward_active(const at::Tensor & x) override;

 private:
  std::map<std::string, double> dropout_;
  AdapterDict *A_, *E_, *B_;
};

class PeftModel;

/// AdaLoRA's rank allocator (upstream's RankAllocator, AdaLoraModel.update_and_allocate and the
/// orthogonal regularisation of AdaLoraModel.forward) for the trainable AdaLoRA adapter of a model.
/// Sensitivity of every entry of A, E, B: EMA (beta1) of |p * grad| times the EMA (beta2) of its
/// deviation; a triplet i of a module scores E's entry plus the means over A's row i and B's column i.
/// Steps 0..tinit only update the EMAs. Then, until total_step - tfinal, the budget (kept triplets over
/// all modules) falls cubically from the sum of the initial ranks to target_r per module, and every
/// deltaT steps the E entries scoring at or below the (initial - budget)-th smallest score are set to 0
/// (they may regrow in between). At step total_step - tfinal the final mask is taken at the target
/// budget and the EMAs are dropped; later steps mask E again by it. Each mask is stored as the adapter
/// config's rank_pattern ("<module>.lora_E" -> keep flags), which save_pretrained writes and by which it
/// drops the masked rows, as upstream.
///
/// The loop, as upstream (step = 0, 1, ..., total_step - 1):
///   at::Tensor loss = causal_lm_loss(logits, ids) + alloc.orthogonal_regularization();
///   loss.backward(); optimizer.step(); alloc.update_and_allocate(step); optimizer.zero_grad();
class AdaLoraAllocator {
 public:
  /// `adapter` must be an AdaLoRA adapter of `model` that trains (not inference_mode). The model must
  /// outlive the allocator and keep the adapter.
  explicit AdaLoraAllocator(PeftModel & model, const std::string & adapter = "default");

  /// orth_reg_weight * mean over every A and B of ||A A^T - I||_F, ||B^T B - I||_F (differentiable):
  /// what upstream adds to the loss.
  at::Tensor orthogonal_regularization() const;
  /// After optimizer.step(), before zero_grad() (it reads the gradients).
  void update_and_allocate(int64_t global_step);

  /// Upstream's budget_schedule: the budget of `step` and whether that step masks.
  std::pair<int64_t, bool> budget_schedule(int64_t step) const;
  int64_t initial_budget() const { return initial_budget_; }
  int64_t target_budget() const { return target_budget_; }
  /// The budget of the last update_and_allocate call.
  int64_t budget() const { return budget_; }
  /// The last mask: "<module>.lora_E" -> keep flags (empty before the first mask).
  const std::map<std::string, std::vector<bool>> & rank_pattern() const { return rank_pattern_; }
  /// The triplet scores (module path -> (R)) and the threshold of the last mask.
  const std::map<std::string, at::Tensor> & scores() const { return scores_; }
  double threshold() const { return threshold_; }

 private:
  struct Module {
    std::string path;
    at::Tensor A, E, B;         // the parameters
    at::Tensor ipt[3], unc[3];  // EMAs of sensitivity and uncertainty of A, E, B
  };
  void update_ipt();
  void mask_to_budget(int64_t budget);
  void apply_rank_pattern();
  void store_rank_pattern();

  PeftModel & model_;
  std::string adapter_;
  int64_t target_r_, tinit_, tfinal_, delta_t_, total_step_;
  double beta1_, beta2_, orth_reg_weight_;
  std::vector<Module> modules_;  // in model order
  int64_t initial_budget_ = 0, target_budget_ = 0, budget_ = 0;
  double threshold_ = 0;
  std::map<std::string, std::vector<bool>> rank_pattern_;
  std::map<std::string, at::Tensor> scores_;
};

}  // namespace peft
