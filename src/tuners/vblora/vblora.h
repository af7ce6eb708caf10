// VB-LoRA (PEFT's tuners/vblora) on Linear layers: every length-L sub-vector of LoRA's A (r, I) and
// B (O, r) is a softmax-weighted sum of the top-k vectors of one bank (N, L) that all layers of the
// adapter share and train; each layer trains only the logits that choose them:
//   A, B = math::vblora_factors(logits_A (r, I/L, N), logits_B (O/L, r, N), bank, topk)
//   y = base(x) + (drop(x) A^T) B^T,   dW = B A.
// save_only_topk_weights files hold the top-k indices and the first k-1 weights instead of the logits.
#pragma once
#include <map>

#include "peft/nn/layers.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

/// A VBLORA config's options, parsed once.
struct VBLoRAOptions : MethodOptions {
  int64_t r = 4;
  int64_t topk = 2;
  int64_t num_vectors = 256;
  int64_t vector_length = 256;
  double dropout = 0;  // vblora_dropout
  double init_logits_std = 0.1;
  double init_vector_bank_bound = 0.02;
  bool save_only_topk_weights = false;
};

class VBLoRALinear : public TunerLayer {
 public:
  explicit VBLoRALinear(LayerPtr base);
  /// bank: the adapter's shared vector bank (num_vectors, vector_length).
  void add_adapter(const std::string & name, const at::Tensor & bank, const VBLoRAOptions & o);

  std::string adapter_signature(const std::string & name) const override;

  LinearBase & linear() const { return static_cast<LinearBase &>(*base_layer_); }
  /// A (r, I) and B (O, r) of adapter `name`.
  std::pair<at::Tensor, at::Tensor> factors(const std::string & name) const;

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  at::Tensor forward_active(const at::Tensor & x) override;

 private:
  struct Settings {
    at::Tensor bank;
    int64_t topk;
    double dropout;
  };
  std::map<std::string, Settings> settings_;
  AdapterDict *logits_A_, *logits_B_;
  std::shared_ptr<torch::nn::Module> buffers_;  // "vblora_shared": the bank as a buffer (a compile input)
};

}  // namespace peft
