// VeRA (PEFT §2.10) on Linear: frozen random projections shared by all layers of an adapter
// (vera_A (R, max_in), vera_B (max_out, R), sliced per layer) and two trainable vectors per layer:
//   y = base(x) + lambda_b * (B_l (lambda_d * (A_l drop(x))))
// dW = (lambda_b[:, None] B_l)(lambda_d[:, None] A_l).
#pragma once
#include <map>

#include "peft/nn/layers.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

/// A VERA config's options, parsed once.
struct VeraOptions : MethodOptions {
  int64_t r = 256;
  int64_t prng_key = 0;  // projection_prng_key
  bool save_projection = true;
  double dropout = 0;    // vera_dropout
  double d_initial = 0.1;
  bool init_default = true;  // init_weights
};

class VeRALinear : public TunerLayer {
 public:
  explicit VeRALinear(LayerPtr base);
  /// A, B: the adapter's shared projections (sliced here to this layer's size).
  void add_adapter(const std::string & name, const at::Tensor & A, const at::Tensor & B, double dropout,
                   double d_initial, bool init_default);

  std::string adapter_signature(const std::string & name) const override;

  at::Tensor delta_weight(const std::string & name) const;
  LinearBase & linear() const { return static_cast<LinearBase &>(*base_layer_); }

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  at::Tensor forward_active(const at::Tensor & x) override;

 private:
  at::Tensor A_of(const std::string & n) const;  // (R, I)
  at::Tensor B_of(const std::string & n) const;  // (O, R)
  std::map<std::string, double> dropout_;
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> shared_;  // the full shared projections
  AdapterDict *lb_, *ld_;
  std::shared_ptr<torch::nn::Module> buffers_;  // "vera_shared": the projections as buffers (compile inputs)
};

/// PEFT's projections for a seed: kaiming-uniform (gain sqrt(2)) from a CPU generator seeded with
/// projection_prng_key, A (r, max_in) drawn before B (max_out, r).
std::pair<at::Tensor, at::Tensor> vera_projections(int64_t r, int64_t max_in, int64_t max_out, uint64_t seed);

}  // namespace peft
