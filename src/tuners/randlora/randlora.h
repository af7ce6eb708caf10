// RandLoRA (PEFT's tuners/randlora) on Linear layers: random bases shared by all layers of the adapter
// (randlora_A (r, 1, min_dim), randlora_B (max_dim, bases, r), saved in the file) and two trainable
// tensors per layer, lambda (r, bases) and gamma (bases, min_dim), bases = ceil(min(in, out) / r):
//   U = (lambda[:, :, None] * A[:, :bases, :min] * gamma[None]) flattened to (r*bases, min)
//   V = B[:max, :bases, :] flattened to (max, bases*r)
//   the product P (., in), Q (out, .) is (U, V) when in <= out, else (V^T, U^T);
//   y = base(x) + (drop(x) P^T) Q^T * randlora_alpha / r,   dW = Q P * randlora_alpha / r.
#pragma once
#include <map>

#include "peft/nn/layers.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

/// A RANDLORA config's options, parsed once.
struct RandLoraOptions : MethodOptions {
  int64_t r = 32;
  double alpha = 640;  // randlora_alpha
  double dropout = 0;  // randlora_dropout
  int64_t prng_key = 0;  // projection_prng_key
  bool sparse = false, very_sparse = false;
  bool init_default = true;  // init_weights
};

class RandLoraLinear : public TunerLayer {
 public:
  explicit RandLoraLinear(LayerPtr base);
  /// A, B: the adapter's shared bases (sliced here to this layer's size).
  void add_adapter(const std::string & name, const at::Tensor & A, const at::Tensor & B, const RandLoraOptions & o);

  std::string adapter_signature(const std::string & name) const override;
  /// PEFT saves each layer's view of the shared bases too (<module>.randlora_A / .randlora_B).
  std::vector<std::pair<std::string, at::Tensor>> adapter_buffers(const std::string & name) const override;
  void rescale(const std::string & name, const AdapterConfig & cfg, const std::string & path, double factor) override;

  LinearBase & linear() const { return static_cast<LinearBase &>(*base_layer_); }
  /// P (k, in) and Q (out, k) of adapter `name` (before the scale).
  std::pair<at::Tensor, at::Tensor> factors(const std::string & name) const;

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  at::Tensor forward_active(const at::Tensor & x) override;

 private:
  struct Settings {
    at::Tensor A, B;  // the full shared bases
    double dropout;
  };
  std::map<std::string, Settings> settings_;
  AdapterDict *lambda_, *gamma_;
  std::shared_ptr<torch::nn::Module> buffers_;  // "randlora_shared": the bases as buffers (compile inputs)
};

}  // namespace peft
