// add_weighted_adapter for LoRA (PEFT §3.10): a new adapter combining existing ones.
//   cat:     A = vstack(w_i s_i A_i), B = hstack(B_i)            (exactly sum_i w_i s_i B_i A_i)
//   linear, ties, magnitude_prune: A and B merged separately with weights sign(c)sqrt|c| and sqrt|c|,
//            c_i = w_i s_i (cross terms B_i A_j appear for several adapters, as in PEFT)
//   svd:     dW = sum_i w_i s_i dW_i (dW_i already scaled: PEFT's double scaling), truncated SVD
// The new adapter has r = lora_alpha = new rank (scale 1), is frozen and not active (set_adapter it).
#pragma once
#include <string>
#include <vector>

namespace peft {

class PeftModel;

struct WeightedAdapterOptions {
  std::string combination_type = "svd";  // svd | cat | linear | ties | magnitude_prune
  int64_t svd_rank = -1;                 // -1: the largest source rank
  double svd_clamp = -1;                 // quantile to clamp U and Vh at; -1 = no clamp
  double density = -1;                   // ties / magnitude_prune: fraction of entries kept
  std::string majority_sign_method = "total";  // ties: total | frequency
};

/// Combine `adapters` with `weights` into a new adapter `name` (a no-op if `name` exists, as in PEFT).
void add_weighted_adapter(PeftModel & model, const std::vector<std::string> & adapters,
                          const std::vector<double> & weights, const std::string & name,
                          const WeightedAdapterOptions & options = {});

}  // namespace peft
