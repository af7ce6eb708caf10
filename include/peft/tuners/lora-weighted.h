// add_weighted_adapter for LoRA (PEFT §3.10): a new adapter combining existing ones.
//   cat:     A = vstack(w_i s_i A_i), B = hstack(B_i)            (exactly sum_i w_i s_i B_i A_i)
//   linear, ties, dare_linear, dare_ties, magnitude_prune: A and B merged separately with weights
//            sign(c)sqrt|c| and sqrt|c|, c_i = w_i s_i (cross terms B_i A_j appear for several adapters, as in PEFT)
//   svd, ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd: dW = the operator over w_i s_i dW_i
//            (dW_i already scaled: PEFT's double scaling), truncated SVD
// Operators (PEFT's merge_utils): magnitude_prune keeps the top density of |t|; dare_* keep each entry with
// probability density (Bernoulli) and divide by density; ties/dare_ties then keep, per entry, the
// tensors agreeing with the majority sign and average them.
// The new adapter has r = lora_alpha = new rank (scale 1), is frozen and not active (set_adapter it).
// Random draws, as PEFT: the new adapter's layers are first created with the first source's init (from the
// global generator, in upstream's order), then A and B are overwritten; a DoRA first source makes a DoRA
// adapter whose magnitude is the norm of W + s B0 A0 of that random init (PEFT never recomputes it: with the
// default init B0 = 0, so ||W||; with init_lora_weights false it depends on the generator's state, and
// at::manual_seed(s) before the call gives what upstream gives after torch.manual_seed(s)). Without `seed`,
// the DARE masks then come from the same generator.
// IA3 sources: PEFT's IA3 linear combination, l = sum_i w_i l_i, targets the union of the sources'
// (combination_type linear or left at its default; no other option).
#pragma once
#include <string>
#include <vector>

namespace peft {

class PeftModel;

struct WeightedAdapterOptions {
  std::string combination_type = "svd";  // svd | cat | linear | ties | dare_linear | dare_ties | magnitude_prune
                                         // | ties_svd | dare_linear_svd | dare_ties_svd | magnitude_prune_svd
  int64_t svd_rank = -1;                 // -1: the largest source rank
  double svd_clamp = -1;                 // quantile to clamp U and Vh at; -1 = no clamp
  bool svd_full_matrices = true;         // torch.linalg.svd's full_matrices
  double density = -1;                   // ties / dare_* / magnitude_prune: fraction of entries kept
  std::string majority_sign_method = "total";  // ties, dare_ties: total | frequency
  int64_t seed = -1;  // dare_*: the masks come from a generator seeded with this at the first draw, drawn in
                      // PEFT's order (layers in module order; A's then B's, adapters in order; or one per delta
                      // for *_svd, over PEFT's layout of the delta: (V, D) on an embedding, (in, out) on a
                      // Conv1D); -1: LibTorch's default generator, after the new adapter's init draws
};

/// Combine `adapters` with `weights` into a new adapter `name` (a no-op if `name` exists, as in PEFT).
void add_weighted_adapter(PeftModel & model, const std::vector<std::string> & adapters,
                          const std::vector<double> & weights, const std::string & name,
                          const WeightedAdapterOptions & options = {});

}  // namespace peft
